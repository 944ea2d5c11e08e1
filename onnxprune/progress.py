"""One progress-bar policy for every long step.

Bars go to stderr and only when stderr is a terminal (tqdm's ``disable=None``), so logs of deploy
pipelines and the one-line error contract stay clean; ``enabled=False`` (``--quiet``, the API's
``progress=False``) hides them everywhere.
"""

from __future__ import annotations

from tqdm import tqdm


def bar(iterable=None, *, desc: str, unit: str, enabled: bool = True, total=None):
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, disable=None if enabled else True)
