"""Read an ONNX file's embedded weights straight into arrays, parsing protobuf for the rest only.

protobuf's Python API has no way to parse a message and leave a bytes field unread: ``onnx.load`` holds
the file's bytes, the parsed message holds every weight again (upb keeps it in the message's arena
until the whole message is freed), and ``numpy_helper.to_array`` copies each one a third time. Peak
memory was twice the weights plus the file, and reading vgg16_bn (0.55 GB) took 0.75 s.

So the file is scanned at the wire level along one path only -- ModelProto.graph (7) ->
GraphProto.initializer (5) -> TensorProto.raw_data (9) -- through a memory map whose payload pages are
never touched; protobuf parses the file without those payloads (kilobytes), and each payload is read from
the file into its own array. Every other field is handed to protobuf byte for byte. Anything unexpected
(an old group wire type, a packed or sub-byte type, duplicate names) returns None and the caller reads
the file the ordinary way, with the same result.
"""

from __future__ import annotations

import mmap
import os
import sys

import numpy as np
import onnx
from onnx import helper

from .runtime import in_memory_stub

MIN_PAYLOAD = 1 << 16  # smaller weights stay in the protobuf (shape inference may read them)


class _Unexpected(Exception):
    pass


def _varint(buf, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise _Unexpected("varint too long")


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _fields(buf, start: int, end: int):
    """(field number, field start, value start, value end) of each field of the message buf[start:end]."""
    i = start
    while i < end:
        fs = i
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            _, j = _varint(buf, i)
        elif wire == 1:
            j = i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            j = i + n
        elif wire == 5:
            j = i + 4
        else:
            raise _Unexpected(f"wire type {wire}")
        if j > end:
            raise _Unexpected("field runs past its message")
        yield num, fs, i, j
        i = j


def _submessage(num: int, body: bytes) -> bytes:
    return _encode_varint(num << 3 | 2) + _encode_varint(len(body)) + body


def _tensor(buf, start: int, end: int, payloads: list) -> bytes:
    parts, raw = [], None
    for num, fs, vs, ve in _fields(buf, start, end):
        if num == 9 and ve - vs >= MIN_PAYLOAD:
            raw = (vs, ve - vs)
            continue
        parts.append(bytes(buf[fs:ve]))
    payloads.append(raw)
    return b"".join(parts)


def _graph(buf, start: int, end: int, payloads: list) -> bytes:
    parts = []
    for num, fs, vs, ve in _fields(buf, start, end):
        parts.append(_submessage(5, _tensor(buf, vs, ve, payloads)) if num == 5 else bytes(buf[fs:ve]))
    return b"".join(parts)


def read_without_payloads(path: str | os.PathLike) -> tuple[onnx.ModelProto, dict[str, np.ndarray]] | None:
    """(model whose large embedded weights are in-memory stubs, those weights as arrays), or None where
    the file is not what this reader expects (the caller then reads it the ordinary way)."""
    if sys.byteorder != "little":
        return None
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return None
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                payloads: list = []
                parts = []
                for num, fs, vs, ve in _fields(buf, 0, size):
                    parts.append(_submessage(7, _graph(buf, vs, ve, payloads)) if num == 7 else bytes(buf[fs:ve]))
            model = onnx.ModelProto()
            model.ParseFromString(b"".join(parts))
            inits = model.graph.initializer
            if len(inits) != len(payloads) or len({t.name for t in inits}) != len(inits):
                return None
            arrays: dict[str, np.ndarray] = {}
            for t, raw in zip(inits, payloads):
                if raw is None:
                    continue
                offset, length = raw
                try:
                    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
                except (KeyError, ValueError, TypeError):
                    return None
                count = int(np.prod(t.dims, dtype=np.int64))
                if dtype.kind not in "biufc" or dtype.itemsize * count != length or t.data_type in _PACKED:
                    return None  # sub-byte, string or mismatched payloads: onnx's own reader says what is wrong
                arr = np.empty(count, dtype=dtype)
                f.seek(offset)
                if f.readinto(memoryview(arr).cast("B")) != length:
                    return None
                arrays[t.name] = arr.reshape(tuple(t.dims))
                t.CopyFrom(in_memory_stub(t))
    except Exception:  # any surprise (truncated file, bad varint, protobuf refusing it): the ordinary reader decides
        return None
    return model, arrays


_PACKED = {
    getattr(onnx.TensorProto, n)
    for n in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2", "FLOAT6E2M3", "FLOAT6E3M2")
    if hasattr(onnx.TensorProto, n)
}
