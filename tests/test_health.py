"""Habits that keep the code safe to change: layers without cycles, registries that refuse duplicates,
files readable like the model beside them, hand-edited plans refused in one line."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from bad_inputs import small_model

import onnxprune


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "onnxprune", *args], capture_output=True, text=True, **kw)


def test_import_layers_hold_and_nothing_imports_in_a_cycle():
    pytest.importorskip("importlinter", reason="import-linter is in the dev extra")
    root = os.path.join(os.path.dirname(__file__), "..")
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert r.returncode == 0, r.stdout[-2000:]
    assert "2 kept, 0 broken" in r.stdout


def test_reports_are_written_with_the_umask_mode(tmp_path):
    src = small_model(tmp_path)
    out, rep, md, plan = (str(tmp_path / n) for n in ("p.onnx", "r.json", "r.md", "plan.json"))
    old = os.umask(0o022)
    try:
        r = _cli("prune", src, "-o", out, "--report", rep, "--report", md, "--save-plan", plan)
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    for path in (out, rep, md, plan):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path


def test_hand_edited_plan_without_sources_is_a_one_line_error(tmp_path):
    src = small_model(tmp_path)
    plan = tmp_path / "plan.json"
    made = _cli("prune", src, "-o", str(tmp_path / "a.onnx"), "--round-to", "1", "--save-plan", str(plan))
    assert made.returncode == 0, made.stderr
    data = json.loads(plan.read_text())
    assert data["groups"]
    for g in data["groups"]:
        g.pop("sources", None)
        g["channels"] = int(g.get("channels", 0)) + 1  # as if made for another model
    plan.write_text(json.dumps(data))
    r = _cli("prune", src, "-o", str(tmp_path / "b.onnx"), "--plan", str(plan))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "was made for" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b.onnx").exists()


def test_torch_op_registry_refuses_duplicates():
    from onnxprune.torch_eval import op

    with pytest.raises(AssertionError, match="registered twice"):
        op("Conv")(lambda t, x, a, n: None)


def test_criterion_options_are_checked():
    """A misspelt criterion option is an error, not silently ignored."""
    with pytest.raises(onnxprune.OnnxPruneError, match="unknown option"):
        onnxprune.prune(small_model_proto(), criterion="thinet", data="random:8", sampels=10)


def small_model_proto():
    from graphs import G

    b = G()
    b.output(b.conv(b.op("Relu", [b.conv(b.x, 4, 8)]), 8, 3))
    return b.model()
