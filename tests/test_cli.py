"""The CLI contract other tools rely on, and one-line errors for bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from bad_inputs import CASES, command, small_model, unprunable

import onnxprune


def run(*args, cwd=None):
    p = subprocess.run([sys.executable, "-m", "onnxprune", *args], capture_output=True, text=True, cwd=cwd)
    return p.returncode, p.stdout, p.stderr


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_analyze_json_contract(trained_models, tmp_path):
    out = tmp_path / "a.json"
    rc, stdout, _ = run("analyze", os.path.join(trained_models, "resnet20.onnx"), "--json", str(out))
    assert rc == 0 and "prunable" in stdout
    data = json.loads(out.read_text())
    for g in data["groups"]:
        assert {"id", "channels", "prunable", "reason", "sources"} <= set(g)
    assert {"macs", "params", "prunable_channel_fraction"} <= set(data["total"])
    assert 0.95 < data["total"]["prunable_channel_fraction"] <= 1.0


def test_prune_writes_model_and_report(trained_models, tmp_path):
    src = os.path.join(trained_models, "resnet20_dynamo.onnx")
    before = sha(src)
    out, rep = tmp_path / "p.onnx", tmp_path / "r.json"
    rc, stdout, stderr = run(
        "prune",
        src,
        "-o",
        str(out),
        "--ratio",
        "0.5",
        "--criterion",
        "l2",
        "--round-to",
        "4",
        "--report",
        str(rep),
        "--save-plan",
        str(tmp_path / "plan.json"),
    )
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


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_one_line_answer(tmp_path, case):
    """Every case of the reliability table (docs/RESULTS.md): one line, the right exit code, no output, input intact."""
    path, args, out_dir = command(case, tmp_path)
    before = sha(path) if os.path.isfile(path) else None
    rc, stdout, stderr = run(*args)
    lines = [ln for ln in stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and "Traceback" not in stderr and "internal error" not in stderr, stderr
    if CASES[case][2] == "error":
        assert rc in (1, 2) and "error" in lines[0]
        assert os.listdir(out_dir) == []  # no partial output, no temporary files
    else:
        assert rc == 0 and "warning" in lines[0]
    if before is not None:
        assert sha(path) == before  # the input model is never modified


def test_unprunable_copy_only_when_asked(tmp_path):
    path = unprunable(tmp_path)
    out = tmp_path / "o.onnx"
    rc, _, stderr = run("prune", path, "-o", str(out))
    assert rc == 0 and "no output written" in stderr and not out.exists()
    rc, _, stderr = run("prune", path, "-o", str(out), "--copy-unprunable")
    assert rc == 0 and out.exists() and "unchanged copy" in stderr
    a, b = onnx.load(path), onnx.load(str(out))
    assert [t.dims for t in a.graph.initializer] == [t.dims for t in b.graph.initializer]


def test_interrupt_leaves_no_partial_file(tmp_path, shared_models):
    """Ctrl-C in the middle of a long run: exit 130, one line, nothing in the output folder."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "onnxprune",
            "prune",
            os.path.join(shared_models, "vgg11.onnx"),
            "-o",
            str(out_dir / "o.onnx"),
            "--criterion",
            "apoz",
            "--no-reconstruct",
            "--calib",
            "random:1000000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's background jobs inherit SIGINT ignored (CI runners may start us so); a
        # terminal's Ctrl-C reaches a process with the default disposition
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # a long stream of small onnxruntime calls: Python sees the signal between two of them
    time.sleep(20)  # past the imports (1 s idle, several on a loaded machine), inside the calibration pass
    assert p.poll() is None, p.communicate()
    p.send_signal(signal.SIGINT)
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == "onnxprune: interrupted; no output written"
    assert os.listdir(out_dir) == []


def test_debug_shows_traceback(tmp_path):
    rc, _, stderr = run("--debug", "prune", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "o.onnx"))
    assert rc != 0 and "Traceback" in stderr


def test_external_data_model_loads_and_prunes(tmp_path, trained_models):
    src = os.path.join(trained_models, "resnet20_dynamo.onnx")
    d = tmp_path / "copy"
    d.mkdir()
    shutil.copy(src, d)
    shutil.copy(src + ".data", d)
    out = tmp_path / "o.onnx"
    rc, _, stderr = run("prune", str(d / "resnet20_dynamo.onnx"), "-o", str(out), "--external-data")
    assert rc == 0, stderr
    assert (tmp_path / "o.onnx.data").exists()
    m = onnx.load(str(out))
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    from onnxprune.runtime import run_model

    assert run_model(m, {m.graph.input[0].name: x})[0].shape == (2, 10)
