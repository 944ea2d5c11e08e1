"""The one registry of per-operator channel rules.

A rule is a small function ``rule(node, ctx)`` that reads the labels of the node's inputs and says,
through ``ctx``, what its outputs carry, which channels it couples, which parameters/constants must be
sliced (as data: ``Action``), where channels are consumed (for the masked reference) and what it cannot
prove safe (freeze). Rules never touch the graph: the rewriter applies their actions.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

RuleFn = Callable[[onnx.NodeProto, "object"], None]
RULES: dict[str, RuleFn] = {}
# Ops that create channels (sources) and so must run even when no input carries labels.
SOURCE_OPS: set[str] = set()


def rule(*op_types: str, source: bool = False) -> Callable[[RuleFn], RuleFn]:
    """Register ``fn`` for ``op_types``; a second rule for the same op is a bug, so it raises."""

    def deco(fn: RuleFn) -> RuleFn:
        for op in op_types:
            if op in RULES:
                raise RuntimeError(f"duplicate channel rule for {op}: {RULES[op].__module__} and {fn.__module__}")
            RULES[op] = fn
            if source:
                SOURCE_OPS.add(op)
        return fn

    return deco


def get_rule(op_type: str, domain: str = "") -> RuleFn | None:
    if domain not in ("", "ai.onnx"):
        return None
    return RULES.get(op_type)
