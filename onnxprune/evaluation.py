"""Accuracy and agreement of a model on data, streamed (never all outputs in memory)."""

from __future__ import annotations

import os

import numpy as np

from .data import DataSpec, open_data
from .errors import OnnxPruneError
from .load import read_model
from .plugins import load_callable
from .progress import bar
from .runtime import make_session


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def evaluate(graph, spec: DataSpec, reference_graph=None, progress: bool = False) -> dict:
    """Top-1/top-5 (with labels) and, against a reference, top-1 agreement, max/mean |diff| and KL."""
    sess = make_session(graph.model, arrays=graph.consts)
    ref = make_session(reference_graph.model, arrays=reference_graph.consts) if reference_graph is not None else None
    n = correct1 = correct5 = agree = 0
    kl_sum = abs_sum = 0.0
    max_abs = 0.0
    elems = 0
    it = open_data(spec, graph)
    if progress:
        it = bar(it, desc="eval", unit="batch")
    for feeds, labels in it:
        out = np.asarray(sess.run(None, feeds)[0], dtype=np.float64).reshape(len(next(iter(feeds.values()))), -1)
        n += len(out)
        top = np.argsort(-out, axis=1)[:, :5]
        if labels is not None:
            labels = np.asarray(labels).reshape(-1)
            correct1 += int(np.sum(top[:, 0] == labels))
            correct5 += int(np.sum(np.any(top == labels[:, None], axis=1)))
        if ref is not None:
            r = np.asarray(ref.run(None, feeds)[0], dtype=np.float64).reshape(out.shape)
            agree += int(np.sum(np.argmax(r, 1) == top[:, 0]))
            d = np.abs(r - out)
            max_abs = max(max_abs, float(d.max()))
            abs_sum += float(d.sum())
            elems += d.size
            p, q = _softmax(r), _softmax(out)
            kl_sum += float(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12))))
    res: dict = {"samples": n}
    if labels is not None or correct1:
        res.update(top1=100.0 * correct1 / n, top5=100.0 * correct5 / n)
    if ref is not None:
        res.update(
            top1_agreement=100.0 * agree / n,
            max_abs_diff=max_abs,
            mean_abs_diff=abs_sum / max(elems, 1),
            kl_divergence=kl_sum / n,
        )
    return res


def evaluate_task(model, task) -> dict[str, float]:
    """A task plug-in's metrics for ``model`` (a ModelProto or a Graph).

    ``task`` is a callable or ``module:function`` / ``file.py:function``; it is called with
    ``predict(feeds) -> list of output arrays`` and returns a dict of metrics whose first key is the
    primary one (higher is better), e.g. ``{"char_accuracy": 93.4, "line_accuracy": 62.3}``. Its own data,
    pre- and post-processing stay the user's, as in their deployment."""
    fn = load_callable(task, "task") if isinstance(task, str) else task
    if isinstance(model, (str, os.PathLike)):
        model = read_model(model)
    sess = make_session(getattr(model, "model", model), arrays=getattr(model, "consts", None))

    def predict(feeds: dict) -> list:
        return sess.run(None, feeds)

    res = fn(predict)
    if not isinstance(res, dict) or not res:
        raise OnnxPruneError(f"task {getattr(fn, '__name__', fn)} must return a non-empty dict of metrics")
    try:
        return {str(k): float(v) for k, v in res.items()}
    except (TypeError, ValueError):
        raise OnnxPruneError(f"task {getattr(fn, '__name__', fn)} returned a non-numeric metric") from None


def primary(metrics: dict[str, float]) -> tuple[str, float]:
    """The task's primary metric: its first key."""
    name = next(iter(metrics))
    return name, metrics[name]
