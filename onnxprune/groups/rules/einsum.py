"""Einsum: each letter is an axis; channels follow their letter.

A labelled letter kept in the output passes its channels through (coupling every input that has it);
a labelled letter summed away is a contraction, exact under masking when every input carrying it loses
the same channels (they are coupled, constants sliced). Diagonals, ellipses and channels on several
letters of one input freeze.
"""

from __future__ import annotations

import numpy as np

from .. import labels as L
from ..actions import Action
from ..registry import rule
from ._util import attr


def _parse(eq: str, n_inputs: int):
    eq = eq.replace(" ", "")
    if "." in eq:
        return None
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != n_inputs:
        return None
    if not _:
        counts = {c: lhs.count(c) for c in set(lhs) - {","}}
        rhs = "".join(sorted(c for c, k in counts.items() if k == 1))
    return terms, rhs


@rule("Einsum")
def einsum(node, ctx) -> None:
    eq = attr(node, "equation")
    eq = eq.decode() if isinstance(eq, bytes) else eq
    parsed = _parse(eq, len(node.input))
    if parsed is None or any(len(set(t)) != len(t) for t in parsed[0]):
        return ctx.freeze_inputs(node, f"Einsum '{node.name}': ellipsis or diagonal equation '{eq}'")
    terms, out = parsed
    vectors: dict[str, list[tuple[int, np.ndarray]]] = {}
    for k, (name, term) in enumerate(zip(node.input, terms)):
        lab = ctx.labels(name)
        if lab is None:
            continue
        axes = L.labelled_axes(lab)
        if len(axes) != 1:
            return ctx.freeze_inputs(node, f"Einsum '{node.name}': channels on several axes of one input")
        vectors.setdefault(term[axes[0]], []).append((k, L.vector(lab, axes[0])))
    if len(vectors) > 1 and sum(1 for c in vectors if c in out) > 1:
        return ctx.freeze_inputs(node, f"Einsum '{node.name}': channels on several output axes")
    out_lab = None
    for letter, vecs in vectors.items():
        for _, v in vecs[1:]:
            ctx.couple(vecs[0][1], v)
        vec = vecs[0][1]
        for k, (name, term) in enumerate(zip(node.input, terms)):
            if letter not in term or any(k == j for j, _ in vecs):
                continue
            shape = ctx.shape(name)
            ax = term.index(letter)
            if shape is None or shape[ax] == 1:
                continue
            if ctx.const(name) is None:
                return ctx.freeze_inputs(node, f"Einsum '{node.name}': computed input '{name}' shares a channel axis")
            ctx.act(Action("slice_param", node.name, labels=L.along(vec, 0, 1), axis=0, input=k, param_axis=ax))
        if letter in out:
            out_lab = L.along(vec, out.index(letter), len(out))
        else:
            k0 = vecs[0][0]
            ctx.terminal(node, k0, ctx.labels(node.input[k0]))
    ctx.set(node.output[0], out_lab)
