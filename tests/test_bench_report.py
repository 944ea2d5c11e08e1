"""bench (interleaved latency, speedup intervals), TensorRT availability, and the prune reports."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import onnx
import pytest
from test_cli import run, small_model

import onnxprune
from onnxprune.bench import bench_shapes, benchmark, speedup_ci, summarize
from onnxprune.bench import trt as trt_backend


@pytest.fixture
def pair(tmp_path):
    """A model and its pruned copy (the usual bench call)."""
    src = small_model(tmp_path)
    out = str(tmp_path / "p.onnx")
    rc, _, err = run("prune", src, "-o", out, "--ratio", "0.5")
    assert rc == 0, err
    return src, out


def test_summary_statistics():
    s = summarize(np.array([0.001, 0.002, 0.003, 0.004]), batch=8)
    assert s["median_ms"] == pytest.approx(2.5) and s["mean_ms"] == pytest.approx(2.5)
    assert s["min_ms"] == pytest.approx(1.0) and s["runs"] == 4
    assert s["throughput_per_s"] == pytest.approx(8 / 0.0025)
    assert s["p90_ms"] <= s["p99_ms"] <= 4.0


def test_speedup_interval_covers_the_true_ratio_and_pairs_rounds():
    rng = np.random.default_rng(1)
    drift = 1 + 0.5 * rng.random(400)  # shared machine noise, paired by round
    base, other = 0.010 * drift, 0.005 * drift * (1 + 0.01 * rng.standard_normal(400))
    point, lo, hi = speedup_ci(base, other)
    assert lo <= 2.0 <= hi and hi - lo < 0.05 and point == pytest.approx(2.0, rel=0.01)
    # unpaired noise of the same size gives a wider interval
    _, lo2, hi2 = speedup_ci(base, 0.005 * rng.permutation(drift))
    assert hi2 - lo2 > hi - lo


def test_benchmark_interleaves_and_reports(pair):
    src, pruned = pair
    rep = benchmark([src, pruned], "ort-cpu", threads=1, warmup=2, iters=15)
    assert [m.stats["runs"] for m in rep.models] == [15, 15]
    assert rep.models[0].speedup == 1.0 and rep.models[0].speedup_ci is None
    m = rep.models[1]
    assert m.speedup_ci[0] <= m.speedup <= m.speedup_ci[1] and m.speedup > 0
    assert m.speedup == pytest.approx(rep.models[0].stats["median_ms"] / m.stats["median_ms"])
    assert m.input_shapes == {"x": [1, 4, 8, 8]}
    j = rep.to_json(with_runs=True)
    assert len(j["models"][1]["seconds"]) == 15 and "seconds" not in rep.to_json()["models"][1]
    assert "speedup" in rep.table() and os.path.basename(pruned) in rep.table()


def _dynamic_batch(path):
    m = onnx.load(path)
    for v in (m.graph.input[0], m.graph.output[0]):
        v.type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.save(m, path)


def test_benchmark_by_time_and_batch(pair):
    src, pruned = pair
    for p in pair:
        _dynamic_batch(p)
    rep = benchmark([src, pruned], "ort-cpu", batch=3, warmup=0, iters=None, seconds=0.2)
    assert rep.settings["batch"] == 3 and rep.models[0].input_shapes == {"x": [3, 4, 8, 8]}
    assert rep.models[0].stats["runs"] >= 2 and rep.models[0].stats["runs"] == rep.models[1].stats["runs"]


def test_bench_shapes_refuses_batch_on_fixed_dim(tmp_path):
    path = small_model(tmp_path)
    m = onnx.load(path)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(m, path)
    with pytest.raises(onnxprune.OnnxPruneError, match="fixed leading dim"):
        bench_shapes(path, 4, {})
    assert bench_shapes(path, None, {}) == {"x": (1, 4, 8, 8)}


def test_cli_bench_json(pair, tmp_path):
    src, pruned = pair
    out = tmp_path / "b.json"
    rc, stdout, err = run("bench", src, pruned, "--iters", "5", "--warmup", "1", "--threads", "1", "--json", str(out))
    assert rc == 0, err
    j = json.loads(out.read_text())
    assert j["backend"] == "ort-cpu" and len(j["models"]) == 2 and len(j["models"][1]["seconds"]) == 5
    assert "median ms" in stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["missing.onnx"], "model not found"),
        (["{src}", "--iters", "1"], "--iters"),
        (["{src}", "--backend", "gpu"], "invalid choice"),
    ],
)
def test_cli_bench_bad_input(pair, tmp_path, args, needle):
    src, _ = pair
    rc, _, err = run("bench", *[a.format(src=src) for a in args])
    lines = err.strip().splitlines()
    assert rc != 0 and len(lines) == 1 and needle in err and "Traceback" not in err, err


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_trt_missing_is_one_clear_line(pair):
    src, pruned = pair
    rc, _, err = run("bench", src, pruned, "--backend", "trt")
    assert rc == 1 and err.count("\n") == 1 and "TensorRT is not installed" in err, err
    assert trt_backend.available() and "TensorRT" in trt_backend.available()


@pytest.mark.skipif(trt_backend.available() is not None, reason="needs TensorRT and an NVIDIA GPU")
@pytest.mark.parametrize("fp16", [False, True])
def test_trt_bench_runs_and_caches_engines(pair, tmp_path, fp16):
    src, pruned = pair
    cache = str(tmp_path / "cache")
    rep = benchmark([src, pruned], "trt", fp16=fp16, warmup=2, iters=10, cache_dir=cache)
    assert all(m.stats["runs"] == 10 and m.stats["median_ms"] > 0 for m in rep.models)
    engines = sorted(f for f in os.listdir(cache) if f.endswith(".engine"))
    assert len(engines) == 2 and os.path.exists(os.path.join(cache, "timing.cache"))
    benchmark([src, pruned], "trt", fp16=fp16, warmup=0, iters=2, cache_dir=cache)
    assert sorted(f for f in os.listdir(cache) if f.endswith(".engine")) == engines  # reused, not rebuilt


def test_prune_markdown_and_json_reports(tmp_path, trained_models):
    src = os.path.join(trained_models, "resnet20.onnx")
    out, md, js = tmp_path / "p.onnx", tmp_path / "rep.md", tmp_path / "rep.json"
    rc, _, err = run("prune", src, "-o", str(out), "--ratio", "0.4", "--report", str(md), "--report", str(js))
    assert rc == 0, err
    j = json.loads(js.read_text())
    assert j["files"]["input_bytes"] == os.path.getsize(src) and j["files"]["output_bytes"] == os.path.getsize(out)
    assert j["files"]["output_bytes"] < j["files"]["input_bytes"]
    text = md.read_text()
    assert "## Totals" in text and "file size on disk" in text and f"{j['after']['macs'] / 1e6:,.2f} M" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and ln.split("|")[1].strip().isdigit()]
    assert len(rows) == len(j["groups"])
    for g in j["groups"]:
        assert any(
            r.split("|")[1].strip() == str(g["id"]) and r.split("|")[4].strip() == str(len(g["kept"])) for r in rows
        )
    for png in ("rep_channels.png", "rep_totals.png"):
        assert f"]({png})" in text
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_with_unknown_extension_writes_nothing(tmp_path):
    src = small_model(tmp_path)
    out = tmp_path / "o" / "p.onnx"
    out.parent.mkdir()
    rc, _, err = run("prune", src, "-o", str(out), "--report", str(out.parent / "r.txt"))
    assert rc == 1 and ".json or .md" in err and list(out.parent.iterdir()) == []
