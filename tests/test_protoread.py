"""Reading a model file's weights straight into arrays (protoread) gives what onnx's own reader gives."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnxprune
from onnxprune.load import read_arrays
from onnxprune.protoread import MIN_PAYLOAD, read_without_payloads
from onnxprune.runtime import is_in_memory_stub, materialise

HERE = os.path.dirname(os.path.abspath(__file__))


def _models():
    folder = os.path.join(HERE, "data")
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".onnx"))


@pytest.mark.parametrize("path", _models(), ids=os.path.basename)
def test_weights_read_from_the_file_equal_onnx_own_reading(path):
    want = onnx.load(path, load_external_data=False)
    got, arrays = read_without_payloads(path)
    if not any(t.HasField("raw_data") for t in want.graph.initializer):
        assert not arrays  # external data: read later, from its own file
    full = materialise(got, arrays)
    assert [t.name for t in full.graph.initializer] == [t.name for t in want.graph.initializer]
    for a, b in zip(full.graph.initializer, want.graph.initializer):
        base = os.path.dirname(path)
        np.testing.assert_array_equal(numpy_helper.to_array(a, base), numpy_helper.to_array(b, base))
        assert a.data_type == b.data_type
    stripped = [t for t in got.graph.initializer if is_in_memory_stub(t)]
    assert {t.name for t in stripped} == set(arrays)
    assert all(arrays[t.name].nbytes >= MIN_PAYLOAD for t in stripped)
    want_rest, got_rest = onnx.ModelProto(), onnx.ModelProto()
    want_rest.CopyFrom(want)
    got_rest.CopyFrom(full)
    for m in (want_rest, got_rest):
        del m.graph.initializer[:]
    assert got_rest.SerializeToString(deterministic=True) == want_rest.SerializeToString(deterministic=True)


def _wide(tmp_path, **save):
    w = np.arange(256 * 128, dtype=np.float32).reshape(256, 128, 1, 1)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="c")],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 128, 2, 2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 256, 2, 2])],
        [numpy_helper.from_array(w, "w")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    path = str(tmp_path / "m.onnx")
    onnx.save_model(m, path, **save)
    return path, w


def test_a_truncated_file_is_left_to_onnx_reader_and_its_one_line_error(tmp_path):
    path, _ = _wide(tmp_path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) - 1000])
    assert read_without_payloads(path) is None
    with pytest.raises(onnxprune.OnnxPruneError, match="not a readable ONNX model"):
        read_arrays(path)


def test_external_data_is_read_into_arrays_and_the_working_model_holds_stubs(tmp_path):
    path, w = _wide(tmp_path, save_as_external_data=True, location="m.data", size_threshold=0)
    model, arrays = read_arrays(path)
    np.testing.assert_array_equal(arrays["w"], w)
    assert all(is_in_memory_stub(t) for t in model.graph.initializer)
    g = onnxprune.load(path)
    np.testing.assert_array_equal(g.consts["w"], w)
    np.testing.assert_array_equal(numpy_helper.to_array(g.materialised().graph.initializer[0]), w)
