"""The CLI contract other tools rely on, and one-line errors for bad input."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

import onnxprune
from graphs import G


def run(*args, cwd=None):
    p = subprocess.run([sys.executable, "-m", "onnxprune", *args], capture_output=True, text=True, cwd=cwd)
    return p.returncode, p.stdout, p.stderr


def small_model(tmp_path, name="m.onnx"):
    b = G()
    a = b.op("Relu", [b.conv(b.x, 4, 8, name="a")])
    y = b.conv(b.op("Add", [a, b.conv(a, 8, 8, name="c")]), 8, 3, name="head")
    b.output(y)
    path = str(tmp_path / name)
    onnx.save(b.model(), path)
    return path


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_analyze_json_contract(shared_models, tmp_path):
    out = tmp_path / "a.json"
    rc, stdout, _ = run("analyze", os.path.join(shared_models, "resnet20.onnx"), "--json", str(out))
    assert rc == 0 and "prunable" in stdout
    data = json.loads(out.read_text())
    for g in data["groups"]:
        assert {"id", "channels", "prunable", "reason", "sources"} <= set(g)
    assert {"macs", "params", "prunable_channel_fraction"} <= set(data["total"])
    assert 0.95 < data["total"]["prunable_channel_fraction"] <= 1.0


def test_prune_writes_model_and_report(shared_models, tmp_path):
    src = os.path.join(shared_models, "resnet20_dynamo.onnx")
    before = sha(src)
    out, rep = tmp_path / "p.onnx", tmp_path / "r.json"
    rc, stdout, stderr = run("prune", src, "-o", str(out), "--ratio", "0.5", "--criterion", "l2",
                             "--round-to", "4", "--report", str(rep), "--save-plan", str(tmp_path / "plan.json"))
    assert rc == 0, stderr
    assert sha(src) == before  # the input model is never modified
    r = json.loads(rep.read_text())
    assert r["after"]["macs"] < r["before"]["macs"] and r["verification"]["passed"]
    for g in r["groups"]:
        assert sorted(g["kept"] + g["removed"]) == list(range(g["channels"]))
        if g["prunable"]:
            assert len(g["kept"]) % 4 == 0
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    # the plan replays to the same model
    out2 = tmp_path / "p2.onnx"
    rc, _, stderr = run("prune", src, "-o", str(out2), "--plan", str(tmp_path / "plan.json"))
    assert rc == 0, stderr
    a, b = onnx.load(str(out)), onnx.load(str(out2))
    assert [tuple(t.dims) for t in a.graph.initializer] == [tuple(t.dims) for t in b.graph.initializer]


def test_exclude_freezes_matching_groups(tmp_path):
    path = small_model(tmp_path)
    rc, _, _ = run("analyze", path, "--exclude", "a", "--json", str(tmp_path / "a.json"))
    data = json.loads((tmp_path / "a.json").read_text())
    g = next(g for g in data["groups"] if "a" in g["sources"])
    assert rc == 0 and not g["prunable"] and "exclude" in g["reason"]
    rc, _, stderr = run("analyze", path, "--exclude", "nomatch*")
    assert rc == 0 and "matches no source" in stderr


def test_api_plan_roundtrip(tmp_path):
    path = small_model(tmp_path)
    pruned, report = onnxprune.prune(path, ratio=0.5, criterion="random", seed=3)
    plan = onnxprune.PruningPlan.from_json(report.plan)
    again, _ = onnxprune.prune(path, plan=plan)
    assert [tuple(t.dims) for t in pruned.graph.initializer] == [tuple(t.dims) for t in again.graph.initializer]


def truncated(tmp_path):
    src = small_model(tmp_path, "full.onnx")
    data = open(src, "rb").read()
    p = tmp_path / "trunc.onnx"
    p.write_bytes(data[: len(data) // 2])
    return str(p)


def not_onnx(tmp_path):
    p = tmp_path / "text.onnx"
    p.write_text("hello, I am not a model\n" * 10)
    return str(p)


def missing_external(tmp_path):
    b = G()
    b.output(b.conv(b.op("Relu", [b.conv(b.x, 4, 64)]), 64, 2))
    p = str(tmp_path / "ext.onnx")
    onnx.save(b.model(), p, save_as_external_data=True, location="ext.data", size_threshold=0)
    os.remove(tmp_path / "ext.data")
    return p


def bad_opset(tmp_path):
    b = G(opset=9)
    b.output(b.op("Relu", [b.x]))
    p = str(tmp_path / "op9.onnx")
    onnx.save(b.model(), p)
    return p


def dangling(tmp_path):
    b = G()
    b.output(b.op("Relu", ["nowhere"]))
    m = b.model()
    p = str(tmp_path / "dangling.onnx")
    onnx.save(m, p)
    return p


BAD = {
    "missing file": (lambda t: str(t / "nope.onnx"), []),
    "not onnx": (not_onnx, []),
    "truncated": (truncated, []),
    "missing external data": (missing_external, []),
    "unsupported opset": (bad_opset, []),
    "dangling input": (dangling, []),
    "ratio out of range": (small_model, ["--ratio", "1.0"]),
    "negative ratio": (small_model, ["--ratio", "-0.1"]),
    "unknown criterion": (small_model, ["--criterion", "magic"]),
    "bad input shape": (small_model, ["--input-shape", "x:1x4xfoo"]),
    "unknown input name": (small_model, ["--input-shape", "y:1x4x8x8"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_error(tmp_path, case):
    make, extra = BAD[case]
    path = make(tmp_path)
    out = tmp_path / "out" / "o.onnx"
    out.parent.mkdir()
    rc, stdout, stderr = run("prune", path, "-o", str(out), *extra)
    assert rc != 0
    lines = [ln for ln in stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and "Traceback" not in stderr and "internal error" not in stderr, stderr
    assert list(out.parent.iterdir()) == []  # no partial output, no temp files


def test_output_equal_to_input_refused(tmp_path):
    path = small_model(tmp_path)
    before = sha(path)
    rc, _, stderr = run("prune", path, "-o", path)
    assert rc == 1 and "input" in stderr and sha(path) == before


def test_unwritable_output(tmp_path):
    path = small_model(tmp_path)
    rc, _, stderr = run("prune", path, "-o", str(tmp_path / "no" / "such" / "dir" / "o.onnx"))
    assert rc == 1 and len(stderr.strip().splitlines()) == 1


def test_no_prunable_groups_is_not_an_error(tmp_path):
    b = G()
    b.output(b.conv(b.x, 4, 8, name="only"))  # feeds the graph output: frozen
    path = str(tmp_path / "frozen.onnx")
    onnx.save(b.model(), path)
    rc, stdout, stderr = run("prune", path, "-o", str(tmp_path / "o.onnx"))
    assert rc == 0 and "no prunable groups" in stderr


def test_debug_shows_traceback(tmp_path):
    rc, _, stderr = run("--debug", "prune", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "o.onnx"))
    assert rc != 0 and "Traceback" in stderr


def test_external_data_model_loads_and_prunes(tmp_path, shared_models):
    src = os.path.join(shared_models, "vgg11_dynamo.onnx")
    d = tmp_path / "copy"
    d.mkdir()
    shutil.copy(src, d)
    shutil.copy(src + ".data", d)
    out = tmp_path / "o.onnx"
    rc, _, stderr = run("prune", str(d / "vgg11_dynamo.onnx"), "-o", str(out), "--external-data")
    assert rc == 0, stderr
    assert (tmp_path / "o.onnx.data").exists()
    m = onnx.load(str(out))
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    from onnxprune.runtime import run_model

    assert run_model(m, {m.graph.input[0].name: x})[0].shape == (2, 10)
