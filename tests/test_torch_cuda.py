"""The torch-cuda backend: its numerics are the interpreter's (checked against onnxruntime here, on CPU,
with the channels-last and FP16-autocast paths it uses on the GPU); without CUDA it is one line and exit 1;
on a machine with CUDA the real timing tests run."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import feeds_for, outputs
from test_cli import run, small_model

from onnxprune.bench import benchmark, torch_cuda

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("channels_last", [False, True])
def test_model_function_computes_what_onnxruntime_computes(trained_models, channels_last):
    import onnx

    model = onnx.load(f"{trained_models}/resnet20.onnx")
    feeds = feeds_for(model, ["input:2x1x28x28"])
    fn, names = torch_cuda.model_function(model, "cpu", channels_last=channels_last)
    x = torch.from_numpy(feeds[names[0]])
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        got = fn(x)[0].numpy()
    np.testing.assert_allclose(got, outputs(model, feeds)[0], rtol=1e-4, atol=1e-4)


def test_fp16_autocast_runs_convolutions_in_half(trained_models):
    import onnx

    model = onnx.load(f"{trained_models}/resnet20.onnx")
    feeds = feeds_for(model, ["input:2x1x28x28"])
    fn, names = torch_cuda.model_function(model, "cpu", fp16=True, channels_last=False)
    seen = []
    hook = torch.nn.functional.conv2d

    def spy(*a, **k):
        out = hook(*a, **k)
        seen.append(out.dtype)
        return out

    torch.nn.functional.conv2d = spy
    try:
        with torch.inference_mode():
            got = fn(torch.from_numpy(feeds[names[0]]))[0].float().numpy()
    finally:
        torch.nn.functional.conv2d = hook
    assert seen and all(d == torch.float16 for d in seen)  # CPU autocast to float16 covers conv
    want = outputs(model, feeds)[0]
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.5 and np.abs(got - want).max() < 0.5 * np.abs(want).max()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_without_cuda_bench_is_one_line_and_exit_1(tmp_path):
    src = small_model(tmp_path)
    rc, out, err = run("bench", src, src, "--backend", "torch-cuda", "--iters", "3")
    assert rc == 1 and err.count("\n") == 1 and "no CUDA device" in err and "Traceback" not in err, err
    assert torch_cuda.available() and "torch-cuda" in torch_cuda.available()
    rc, _, err = run("prune", src, "-o", str(tmp_path / "p.onnx"), "--round-to", "auto", "--backend", "torch-cuda")
    assert rc == 1 and err.count("\n") == 1 and "no CUDA device" in err and not (tmp_path / "p.onnx").exists()


@pytest.mark.skipif(torch_cuda.available() is not None, reason="needs PyTorch with CUDA and an NVIDIA GPU")
@pytest.mark.parametrize("fp16,compile", [(False, False), (True, False), (True, True)])
def test_cuda_bench_times_both_models(tmp_path, fp16, compile):
    src = small_model(tmp_path)
    pruned = str(tmp_path / "p.onnx")
    assert run("prune", src, "-o", pruned, "--ratio", "0.5", "--round-to", "1")[0] == 0
    rep = benchmark([src, pruned], "torch-cuda", fp16=fp16, compile=compile, warmup=3, iters=10)
    assert all(m.stats["runs"] == 10 and m.stats["median_ms"] > 0 for m in rep.models)
    assert "CUDA" in rep.runtime
