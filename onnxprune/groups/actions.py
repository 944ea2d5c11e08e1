"""Rewrite actions: what a rule asks the rewriter to change, as plain data.

Every action carries the label array of the tensor it depends on; the rewriter turns labels into kept
indices once the plan is known. That keeps rules free of any knowledge of plans or graph editing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Action:
    """``kind`` is one of:

    - ``slice_param``: slice constant input ``input`` along ``param_axis`` (default ``axis``) by the kept
      positions of ``labels`` on ``axis``.
    - ``set_group``: set attribute ``group`` to the number of kept positions of ``labels`` (1-D).
    - ``counts``: replace entries of constant input ``input`` (or attribute ``attr``) with kept counts:
      ``entries`` maps entry index -> (labels, axis). With ``user`` set, ``node`` is a Concat building a
      shape that several nodes share: the rewriter gives ``user`` its own copy before editing it.
    - ``split_outputs``: turn an equal Split into explicit sizes: ``entries`` maps output index -> (labels, axis).
    - ``slice_range``: Slice entry ``entry`` of starts/ends, over ``labels`` on ``axis`` with original [start, end).
    - ``gather_idx``: remap constant indices (input 1) into kept positions of ``labels`` on ``axis``.
    """

    kind: str
    node: str
    labels: np.ndarray | None = None
    axis: int = 0
    input: int = 0
    attr: str = ""
    entries: dict = field(default_factory=dict)
    start: int = 0
    end: int = 0
    entry: int = 0
    param_axis: int | None = None
    user: str = ""

    @property
    def lab(self) -> np.ndarray:
        """``labels``, for the kinds that carry them (all but ``counts`` and ``split_outputs``)."""
        if self.labels is None:
            raise AssertionError(f"{self.kind} action on '{self.node}' has no labels")
        return self.labels
