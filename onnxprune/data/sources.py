"""Data for calibration, criteria and evaluation, from the sources a deploy engineer already has.

Accepted everywhere: ``random:N``; a ``.npz`` (arrays keyed by input name, or one array for a
single-input model, optional ``labels``); a ``.npy``; a folder of images (class sub-folders give labels)
with explicit preprocessing; ``package.module:function`` or ``file.py:function`` returning feed dicts; in
the API also an iterable of feed dicts or an onnxruntime ``CalibrationDataReader`` (``get_next() -> dict | None``).
Everything is streamed batch by batch and checked against the model's inputs with a one-line error.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from onnx import helper

from ..errors import OnnxPruneError
from ..load import batch_axes, random_feeds, with_batch
from ..plugins import load_callable

log = logging.getLogger(__name__)

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class DataSpec:
    """How to read and preprocess data (image folders use the preprocessing fields)."""

    source: object
    batch_size: int = 32
    limit: int | None = None
    size: tuple[int, int] | None = None  # H, W for images
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    channel_order: str = "RGB"
    layout: str = "NCHW"
    seed: int = 0
    input_shapes: dict = field(default_factory=dict)


def _inputs(graph) -> list:
    inits = set(graph.consts)
    return [i for i in graph.model.graph.input if i.name not in inits]


def open_data(spec: DataSpec, graph) -> Iterator[tuple[dict, np.ndarray | None]]:
    """Yield ``(feeds, labels or None)`` batches, validated against ``graph``'s inputs."""
    src = spec.source
    if isinstance(src, str):
        if src.startswith("random:"):
            gen = _random(spec, graph, src)
        elif os.path.isdir(src):
            gen = _images(spec, graph, src)
        elif src.endswith(".npz") or src.endswith(".npy"):
            gen = _arrays(spec, graph, src)
        elif ":" in src and not os.path.exists(src):
            gen = _callable(spec, src)
        else:
            raise OnnxPruneError(f"data '{src}': not random:N, a folder of images, .npz/.npy or module:function")
    elif hasattr(src, "get_next"):
        gen = _reader(src)
    elif callable(src):  # a function returning feed dicts: called again for every pass over the data
        gen = _items(src())
    else:
        try:
            gen = ((feed, None) for feed in iter(src))
        except TypeError:
            raise OnnxPruneError(f"data of type {type(src).__name__} is not iterable") from None
    seen = 0
    for feeds, labels in gen:
        feeds = _check(feeds, graph)
        n = len(next(iter(feeds.values())))
        if spec.limit is not None and seen + n > spec.limit:
            keep = spec.limit - seen
            feeds = {k: v[:keep] for k, v in feeds.items()}
            labels = None if labels is None else labels[:keep]
            n = keep
        if n <= 0:
            break
        seen += n
        yield feeds, labels
    if seen == 0:
        raise OnnxPruneError("data source yielded no samples")


def batch_rows(feeds: dict) -> int:
    """Rows of a batch of feeds: the first axis of its first input (1 for a scalar)."""
    v = next(iter(feeds.values()), None)
    return len(v) if v is not None and np.ndim(v) else 1


def batches(spec: DataSpec, graph) -> list[tuple[dict, np.ndarray | None]]:
    return list(open_data(spec, graph))


def _check(feeds, graph) -> dict:
    if not isinstance(feeds, dict):
        raise OnnxPruneError(f"data must yield dicts of input name -> array, got {type(feeds).__name__}")
    out = {}
    for inp in _inputs(graph):
        if inp.name not in feeds:
            raise OnnxPruneError(f"data has no array for input '{inp.name}' (has {sorted(feeds)})")
        arr = np.asarray(feeds[inp.name])
        want = helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
        expect = "x".join("?" if d is None else str(d) for d in dims) or "a scalar"
        if arr.ndim != len(dims) or any(d is not None and d != s for d, s in zip(dims, arr.shape)):
            raise OnnxPruneError(
                f"data for input '{inp.name}' has shape {'x'.join(map(str, arr.shape))}, the model expects {expect}"
            )
        if arr.dtype != want:
            if np.issubdtype(arr.dtype, np.floating) and np.issubdtype(want, np.floating):
                arr = arr.astype(want)
            else:
                raise OnnxPruneError(f"data for input '{inp.name}' is {arr.dtype}, the model expects {np.dtype(want)}")
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            raise OnnxPruneError(f"data for input '{inp.name}' contains NaN or Inf")
        out[inp.name] = arr
    return out


def _batch_step(spec, graph) -> tuple[int, bool]:
    """(batch size, whether the model fixes it): a static batch dim in the model sets the batch size (a
    static first dim is no batch beside an input whose batch is dynamic: a recurrent state (2, batch, C))."""
    if any(batch_axes(graph.model, [i.name for i in _inputs(graph)]).values()):
        return spec.batch_size, False
    fixed = [
        i.type.tensor_type.shape.dim[0].dim_value
        for i in _inputs(graph)
        if i.type.tensor_type.shape.dim and i.type.tensor_type.shape.dim[0].HasField("dim_value")
    ]
    return (min(fixed), True) if fixed else (spec.batch_size, False)


def _usable(n: int, spec, graph, where: str) -> tuple[int, int]:
    """(batch size, samples used): a fixed batch size cannot take a partial last batch, so it is dropped."""
    step, fixed = _batch_step(spec, graph)
    if fixed and n % step:
        log.warning(
            "%s: the model's batch size is fixed at %d; the last %d samples are not used", where, step, n % step
        )
        n -= n % step
    return step, n


def _random(spec, graph, src):
    try:
        n = int(src.split(":", 1)[1])
        if n <= 0:
            raise ValueError
    except ValueError:
        raise OnnxPruneError(f"bad data spec '{src}': expected random:N with N > 0") from None

    rng_seed = spec.seed
    step, fixed = _batch_step(spec, graph)
    done = 0
    while done < n:
        b = min(step, n - done) if not fixed else step
        shapes = with_batch(graph.model, dict(graph.input_shapes), b)
        yield random_feeds(graph.model, shapes, seed=rng_seed + done), None
        done += b


def _arrays(spec, graph, path):
    if not os.path.exists(path):
        raise OnnxPruneError(f"data file not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:
        raise OnnxPruneError(f"cannot read {path}: {e}") from None
    names = [i.name for i in _inputs(graph)]
    if isinstance(data, np.ndarray):
        arrays, labels = {names[0]: data}, None
        if len(names) != 1:
            raise OnnxPruneError(f"{path} holds one array but the model has inputs {names}; use an .npz keyed by name")
    else:
        keys = [k for k in data.files if k != "labels"]
        if all(n in keys for n in names):
            arrays = {n: data[n] for n in names}
        elif len(keys) == 1 and len(names) == 1:
            arrays = {names[0]: data[keys[0]]}
        else:
            raise OnnxPruneError(f"{path} has arrays {keys}; the model's inputs are {names}")
        labels = data["labels"] if "labels" in data.files else None
    n = len(next(iter(arrays.values())))
    if any(len(a) != n for a in arrays.values()) or (labels is not None and len(labels) != n):
        raise OnnxPruneError(f"{path}: arrays and labels have different sample counts")
    step, n = _usable(n, spec, graph, path)
    for start in range(0, n, step):
        sl = slice(start, start + step)
        yield {k: a[sl] for k, a in arrays.items()}, None if labels is None else np.asarray(labels[sl])


def _images(spec, graph, folder):
    from PIL import Image  # a maintained decoder for every common format

    files = sorted(
        f for f in glob.glob(os.path.join(folder, "**", "*"), recursive=True) if f.lower().endswith(IMAGE_EXT)
    )
    if not files:
        raise OnnxPruneError(f"no images ({', '.join(IMAGE_EXT)}) under {folder}")
    classes = sorted({os.path.relpath(os.path.dirname(f), folder) for f in files})
    labelled = classes != ["."]
    inputs = _inputs(graph)
    if len(inputs) != 1:
        raise OnnxPruneError("an image folder can feed a single-input model only")
    shape = graph.input_shapes[inputs[0].name]
    nchw = spec.layout.upper() == "NCHW"
    channels = shape[1] if nchw else shape[-1]
    size = spec.size or ((shape[2], shape[3]) if nchw else (shape[1], shape[2]))
    mean = np.array(spec.mean, dtype=np.float32)
    std = np.array(spec.std, dtype=np.float32)
    step, n = _usable(len(files), spec, graph, folder)
    files = files[:n]
    for start in range(0, len(files), step):
        chunk = files[start : start + step]
        imgs, labels = [], []
        for f in chunk:
            try:
                im = Image.open(f).convert("L" if channels == 1 else "RGB").resize((size[1], size[0]), Image.BILINEAR)
            except Exception as e:
                raise OnnxPruneError(f"cannot decode image {f}: {e}") from None
            a = np.asarray(im, dtype=np.float32) / 255.0
            a = a[..., None] if a.ndim == 2 else a
            if spec.channel_order.upper() == "BGR":
                a = a[..., ::-1]
            a = (a - mean) / std
            imgs.append(np.transpose(a, (2, 0, 1)) if nchw else a)
            labels.append(classes.index(os.path.relpath(os.path.dirname(f), folder)))
        yield {inputs[0].name: np.stack(imgs).astype(np.float32)}, np.array(labels) if labelled else None


def _callable(spec, target):
    yield from _items(load_callable(target, "data function")())


def _items(result):
    if hasattr(result, "get_next"):
        yield from _reader(result)
        return
    for item in result:
        if isinstance(item, tuple) and len(item) == 2:
            yield item
        else:
            yield item, None


def _reader(reader):
    while True:
        feed = reader.get_next()
        if feed is None:
            return
        yield feed, None
