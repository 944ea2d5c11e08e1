"""Protobuf's 2 GB limit and the weight-free copies that keep shape inference and the checker cheap.

Kept apart from ``load`` so that the runtime wrapper, constant folding and the saver can use them
without importing the loader (which imports them).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

SKELETON_MIN_ELEMENTS = 64


PROTO_LIMIT = 2**31 - 2**20  # protobuf cannot serialise a message of 2 GB; a margin for the graph itself


def too_large(model: onnx.ModelProto) -> bool:
    """Whether the model is past protobuf's 2 GB limit. ``ByteSize()`` itself raises there (upb), so
    the weights' payload is summed instead, from their shapes: reading ``raw_data`` would copy every
    tensor's bytes into Python (2.5 s on vgg16_bn for five calls)."""
    total = 0
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            continue
        if t.data_type == onnx.TensorProto.STRING:
            total += sum(len(x) for x in t.string_data)
        else:
            itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
            total += int(np.prod(t.dims, dtype=np.int64)) * itemsize
        if total >= PROTO_LIMIT:
            return True
    return False


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without the payload of large initializers (they become typed graph inputs).

    Shape inference and the checker serialise the whole model; with the weights gone that costs
    milliseconds instead of a second on ResNet-50, and models over 2 GB fit in a protobuf. Small
    constants stay, because shape inference reads their values (Reshape targets, Slice bounds).
    """
    light = onnx.ModelProto()
    big = [
        t
        for t in model.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL  # stubs of arrays held elsewhere included
        or (
            int(np.prod(t.dims)) >= SKELETON_MIN_ELEMENTS
            and t.data_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
        )
    ]
    light.CopyFrom(as_inputs(model, big) if big else model)
    return light


def as_inputs(model: onnx.ModelProto, tensors) -> onnx.ModelProto:
    """``model`` with the initializers ``tensors`` turned into typed graph inputs (after its own); the
    rest is shared, not copied, as in ``with_initializers``."""
    names = {t.name for t in tensors}
    out = with_initializers(model, [t for t in model.graph.initializer if t.name not in names])
    declared = {i.name for i in model.graph.input}
    out.graph.input.extend(
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in tensors if t.name not in declared
    )
    return out


def add_tensor(initializers, arr: np.ndarray, name: str) -> None:
    """Append ``arr`` as a tensor to a repeated initializer field, built in place.

    ``initializers.append(numpy_helper.from_array(arr))`` copies the payload three times (tobytes, into
    the new message, then into the container): 0.56 s for vgg16_bn's 289 MB classifier after pruning,
    0.21 s this way. Strings and big-endian hosts take onnx's own path."""
    arr = np.asarray(arr)
    if arr.dtype.kind in "OSU" or not np.little_endian or arr.dtype.byteorder == ">":
        initializers.append(numpy_helper.from_array(arr, name))
        return
    t = initializers.add()
    t.name = name
    t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
    t.dims.extend(arr.shape)
    t.raw_data = arr.tobytes()


def with_initializers(model: onnx.ModelProto, initializers, outputs=None) -> onnx.ModelProto:
    """The model with other initializers (and other graph outputs when given); the rest is shared, not
    copied, until the caller serialises or copies the result."""
    g = model.graph
    return onnx.ModelProto(
        ir_version=model.ir_version,
        opset_import=model.opset_import,
        producer_name=model.producer_name,
        functions=model.functions,
        graph=onnx.GraphProto(
            name=g.name,
            node=g.node,
            input=g.input,
            output=g.output if outputs is None else outputs,
            value_info=g.value_info,
            initializer=initializers,
            sparse_initializer=g.sparse_initializer,
        ),
    )
