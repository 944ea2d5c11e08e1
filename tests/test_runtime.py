"""Sessions built with the weights passed as arrays run the same model as sessions built from its bytes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from graphs import G

from onnxprune.runtime import IN_MEMORY_MIN_BYTES, _without_weights, make_session, session_with_outputs


def _model() -> onnx.ModelProto:
    b = G(shape=(2, 16, 12, 12))
    h = b.conv(b.x, 16, 256, k=3, name="big")  # 256*16*9 floats = 147 kB: passed as an array
    b.output(b.conv(h, 256, 4, k=1, name="small"))  # 4 kB: stays in the protobuf
    return b.model()


def test_large_weights_go_as_arrays_and_the_outputs_are_unchanged():
    model = _model()
    light, names, arrays = _without_weights(model)
    assert names and all(a.nbytes >= IN_MEMORY_MIN_BYTES for a in arrays)
    assert len(light.SerializeToString()) < IN_MEMORY_MIN_BYTES < len(model.SerializeToString())
    x = np.random.default_rng(0).standard_normal((2, 16, 12, 12)).astype(np.float32)
    feeds = {model.graph.input[0].name: x}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_array_equal(make_session(model).run(None, feeds)[0], want[0])
    inner = model.graph.node[0].output[0]
    got = session_with_outputs(model, [inner]).run(None, feeds)
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1].shape == (2, 256, 12, 12)
    assert [o.name for o in model.graph.output] == [model.graph.output[0].name]  # the model is not changed


def test_loading_normalises_a_file_in_place_and_a_callers_model_on_a_copy(tmp_path):
    """A model read from a file is normalised in place (a copy would hold every weight twice); a
    ModelProto the caller passes keeps its Constant and Identity nodes."""
    import onnxprune

    b = G(shape=(1, 3, 6, 6))
    w = b.rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    const = onnx.helper.make_node("Constant", [], ["wc"], value=onnx.numpy_helper.from_array(w, "wc"))
    ident = onnx.helper.make_node("Identity", ["wc"], ["wi"])
    b.nodes += [const, ident]
    b.output(b.op("Conv", [b.x, "wi"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]))
    m = b.model()
    before = m.SerializeToString()
    from_proto = onnxprune.load(m)
    assert m.SerializeToString() == before
    path = str(tmp_path / "m.onnx")
    onnx.save(m, path)
    from_file = onnxprune.load(path)
    for g in (from_proto, from_file):
        assert not any(n.op_type in ("Constant", "Identity") for n in g.model.graph.node)
        assert np.array_equal(g.consts["wc"], w)


def test_in_memory_stubs_take_their_values_from_the_arrays_given():
    """The masked reference of a verification carries the weights as stubs and the session reads the
    loaded graph's arrays: the outputs are those of the arrays, and a stub without an array is refused."""
    import pytest

    import onnxprune
    from onnxprune.errors import OnnxPruneError
    from onnxprune.runtime import in_memory_stub
    from onnxprune.verify import masked_reference

    model = _model()
    big = next(t for t in model.graph.initializer if onnx.numpy_helper.to_array(t).nbytes >= IN_MEMORY_MIN_BYTES)
    values = {big.name: onnx.numpy_helper.to_array(big) * 2}
    stubbed = onnx.ModelProto()
    stubbed.CopyFrom(model)
    target = next(t for t in stubbed.graph.initializer if t.name == big.name)
    target.CopyFrom(in_memory_stub(target))
    x = np.random.default_rng(1).standard_normal((2, 16, 12, 12)).astype(np.float32)
    feeds = {model.graph.input[0].name: x}
    doubled = onnx.ModelProto()
    doubled.CopyFrom(model)
    t2 = next(t for t in doubled.graph.initializer if t.name == big.name)
    t2.CopyFrom(onnx.numpy_helper.from_array(values[big.name], big.name))
    np.testing.assert_allclose(
        make_session(stubbed, arrays=values).run(None, feeds)[0], make_session(doubled).run(None, feeds)[0], rtol=1e-5
    )
    with pytest.raises(OnnxPruneError):
        make_session(stubbed)
    rep = onnxprune.analyze(model)
    ref, _ = masked_reference(rep.graph, rep.analysis, onnxprune.PruningPlan())
    stubs = [t.name for t in ref.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert stubs == [big.name] and len(ref.SerializeToString()) < IN_MEMORY_MIN_BYTES


def test_runs_ahead_come_back_in_order_with_a_bounded_number_under_way():
    """``runs_in_order`` yields each feed's outputs in the feeds' order while later runs go on, never
    more than ``ahead`` of them under way (the caller's results are the memory it must bound)."""
    import threading
    import time

    from onnxprune.runtime import runs_in_order

    state = {"now": 0, "most": 0}
    lock = threading.Lock()

    class Slow:
        def run(self, names, feeds):
            with lock:
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
            time.sleep(0.01 * (feeds["k"] % 3))  # later feeds may finish first
            with lock:
                state["now"] -= 1
            return [feeds["k"] * 10]

    for ahead in (1, 2, 3):
        state["most"] = 0
        got = [out[0] for out in runs_in_order(Slow(), ["y"], ({"k": k} for k in range(9)), ahead)]
        assert got == [k * 10 for k in range(9)]
        assert state["most"] == ahead
