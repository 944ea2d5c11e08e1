"""Keep every tensor non-empty.

A group can lose most of its channels and still leave one Split part or Slice with none at all (an
empty tensor that no runtime accepts). Allocation repairs such plans by restoring the best-scoring
channel of each emptied tensor; the rewriter refuses any plan that still empties one.
"""

from __future__ import annotations

import numpy as np

from ..groups import Analysis
from ..plan import PruningPlan, emptied


def restore_emptied(analysis: Analysis, plan: PruningPlan, scores: dict[int, np.ndarray]) -> PruningPlan:
    gid, ch = analysis.atom_index()
    removed = {g: set(c) for g, c in plan.remove.items()}
    for _ in range(10000):
        bad = emptied(analysis, PruningPlan({g: sorted(c) for g, c in removed.items()}))
        if not bad:
            break
        name, ax = bad[0]
        labels = analysis.expected[name]
        atoms = np.unique(labels[labels >= 0])
        # every atom here is removed: bring back the class with the best score
        cands = {(int(gid[a]), int(ch[a])) for a in atoms if gid[a] >= 0 and int(ch[a]) in removed.get(int(gid[a]), ())}
        g, c = max(cands, key=lambda gc: (scores[gc[0]][gc[1]] if gc[0] in scores else 0.0, -gc[0], -gc[1]))
        removed[g].discard(c)
    plan.remove = {g: sorted(c) for g, c in removed.items() if c}
    return plan
