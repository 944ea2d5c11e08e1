"""Bad inputs for the CLI: one builder per case, shared by tests/test_cli.py and benchmarks/reliability.py.

Each case is ``(builder, extra CLI args, expected)``: the builder writes what the case needs into a
folder and returns the model path; ``expected`` is ``"error"`` (one line, exit 1 or 2, no output) or
``"warn"`` (exit 0 with a warning line).
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from graphs import G
from onnx import numpy_helper


def small_model(tmp_path, name="m.onnx"):
    b = G()
    a = b.op("Relu", [b.conv(b.x, 4, 8, name="a")])
    y = b.conv(b.op("Add", [a, b.conv(a, 8, 8, name="c")]), 8, 3, name="head")
    b.output(y)
    path = str(tmp_path / name)
    onnx.save(b.model(), path)
    return path


def truncated(tmp_path):
    src = small_model(tmp_path, "full.onnx")
    data = open(src, "rb").read()
    p = tmp_path / "trunc.onnx"
    p.write_bytes(data[: len(data) // 2])
    return str(p)


def short_weights(tmp_path):
    """A weight whose payload holds fewer values than its shape declares (a hand-edited or cut export)."""
    m = onnx.load(small_model(tmp_path, "full.onnx"))
    w = max(m.graph.initializer, key=lambda t: len(t.raw_data))
    w.raw_data = w.raw_data[:-8]
    p = str(tmp_path / "short.onnx")
    onnx.save(m, p)
    return p


def not_onnx(tmp_path):
    p = tmp_path / "text.onnx"
    p.write_text("hello, I am not a model\n" * 10)
    return str(p)


def empty_file(tmp_path):
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
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
    p = str(tmp_path / "dangling.onnx")
    onnx.save(b.model(), p)
    return p


def cycle(tmp_path):
    """Two Convs reading each other's output."""
    m = onnx.load(small_model(tmp_path, "acyclic.onnx"))
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    convs[0].input[0] = convs[1].output[0]
    p = str(tmp_path / "cycle.onnx")
    onnx.save(m, p)
    return p


def nan_weights(tmp_path):
    m = onnx.load(small_model(tmp_path, "finite.onnx"))
    w = numpy_helper.to_array(m.graph.initializer[0]).copy()
    w.flat[3] = np.nan
    w.flat[5] = np.inf
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, m.graph.initializer[0].name))
    p = str(tmp_path / "nan.onnx")
    onnx.save(m, p)
    return p


def wrong_bias(tmp_path):
    """Passes the ONNX checker and shape inference; no runtime accepts it."""
    m = onnx.load(small_model(tmp_path, "ok.onnx"))
    t = m.graph.initializer[1]  # the first Conv's bias: 8 values
    t.CopyFrom(numpy_helper.from_array(np.zeros(5, np.float32), t.name))
    p = str(tmp_path / "bias.onnx")
    onnx.save(m, p)
    return p


def non_model_proto(tmp_path):
    """A valid protobuf of the wrong kind (a TensorProto) renamed to .onnx."""
    p = tmp_path / "tensor.onnx"
    p.write_bytes(numpy_helper.from_array(np.ones((3, 3), np.float32), "t").SerializeToString())
    return str(p)


def unprunable(tmp_path):
    b = G()
    b.output(b.conv(b.x, 4, 8, name="only"))  # feeds the graph output: frozen
    path = str(tmp_path / "frozen.onnx")
    onnx.save(b.model(), path)
    return path


def _calib(tmp_path, arr, name="calib.npz", **extra):
    np.savez(tmp_path / name, x=arr, **extra)
    return str(tmp_path / name)


def with_calib(arr_fn, **extra):
    """A builder for the small model plus a calibration file: returns (model, ["--calib", file])."""

    def build(tmp_path):
        return small_model(tmp_path), ["--calib", _calib(tmp_path, arr_fn(), **extra)]

    return build


rng = np.random.default_rng(0)
CALIB_OK = lambda: rng.standard_normal((8, 4, 8, 8)).astype(np.float32)  # noqa: E731


def _nan():
    a = CALIB_OK()
    a[2, 1, 3, 3] = np.nan
    return a


CASES = {
    "missing file": (lambda t: str(t / "nope.onnx"), [], "error"),
    "empty file": (empty_file, [], "error"),
    "not ONNX (text)": (not_onnx, [], "error"),
    "protobuf of another kind": (non_model_proto, [], "error"),
    "truncated ONNX file": (truncated, [], "error"),
    "weight payload shorter than its shape": (short_weights, [], "error"),
    "external data file missing": (missing_external, [], "error"),
    "unsupported opset (9)": (bad_opset, [], "error"),
    "dangling input": (dangling, [], "error"),
    "cycle": (cycle, [], "error"),
    "NaN/Inf in weights": (nan_weights, [], "error"),
    "Conv bias of the wrong length": (wrong_bias, [], "error"),
    "--ratio 1.0": (small_model, ["--ratio", "1.0"], "error"),
    "--ratio -0.1": (small_model, ["--ratio", "-0.1"], "error"),
    "--target-macs 0.01 (unreachable)": (small_model, ["--target-macs", "0.01"], "error"),
    "--target-macs 1.5": (small_model, ["--target-macs", "1.5"], "error"),
    "--recal-inputs -1": (small_model, ["--recal-inputs", "-1"], "error"),
    "--weigh-against latency without --sensitivity": (small_model, ["--weigh-against", "latency"], "error"),
    "unknown criterion": (small_model, ["--criterion", "magic"], "error"),
    "--one-shot with a criterion other than obs": (small_model, ["--criterion", "l2", "--one-shot"], "error"),
    "malformed --input-shape": (small_model, ["--input-shape", "x:1x4xfoo"], "error"),
    "--input-shape for an unknown input": (small_model, ["--input-shape", "y:1x4x8x8"], "error"),
    "calibration data of the wrong shape": (
        with_calib(lambda: rng.standard_normal((8, 3, 8, 8)).astype(np.float32)),
        ["--criterion", "apoz"],
        "error",
    ),
    "calibration data of the wrong dtype": (
        with_calib(lambda: np.ones((8, 4, 8, 8), np.int64)),
        ["--criterion", "apoz"],
        "error",
    ),
    "calibration data with no samples": (
        with_calib(lambda: np.zeros((0, 4, 8, 8), np.float32)),
        ["--criterion", "apoz"],
        "error",
    ),
    "labels count differs from samples": (
        with_calib(CALIB_OK, labels=np.zeros(5, np.int64)),
        ["--criterion", "taylor"],
        "error",
    ),
    "NaN in calibration data": (with_calib(_nan), ["--criterion", "apoz"], "error"),
    "calibration file missing": (small_model, ["--criterion", "apoz", "--calib", "nowhere.npz"], "error"),
    "-o pointing at the input": (small_model, ["-o", "{model}"], "error"),
    "-o in a folder that does not exist": (small_model, ["-o", "{tmp}/no/such/dir/o.onnx"], "error"),
    "-o is a folder": (small_model, ["-o", "{tmp}"], "error"),
    "--report with an unknown extension": (small_model, ["--report", "{tmp}/out/r.txt"], "error"),
    "--exclude matching nothing": (small_model, ["--exclude", "nomatch*"], "warn"),
    "no prunable groups": (unprunable, [], "warn"),
}


def command(case: str, tmp_path) -> tuple[str, list[str], str]:
    """Build the case in ``tmp_path``: (model path, ``prune`` arguments, the folder that must stay empty).

    The default output is ``tmp_path/out/o.onnx``; a case may name its own ``-o`` (``{model}`` and
    ``{tmp}`` are filled in).
    """
    build, extra, _ = CASES[case]
    built = build(tmp_path)
    path, more = built if isinstance(built, tuple) else (built, [])
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    args = [a.format(model=path, tmp=tmp_path) for a in [*extra, *more]]
    if "-o" not in args:
        args += ["-o", str(out_dir / "o.onnx")]
    return path, ["prune", path, *args], str(out_dir)
