"""Everything ``prune`` can be told, as one typed object shared by the CLI and the API.

``PruneOptions`` holds the three stage options (criterion, allocation, recovery) and the run's own
settings. The API also accepts their fields as keyword shorthands (``ratio=0.5``, ``round_to=8``,
``reconstruct=True``, ``samples=500``): each name is routed to the one object that owns it, and a name
no object owns is an error, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from .allocation.allocate import Allocation
from .criteria import CriterionOptions, get_criterion
from .errors import OnnxPruneError
from .recovery import RecoveryOptions


@dataclass
class PruneOptions:
    criterion: CriterionOptions = field(default_factory=CriterionOptions)
    allocation: Allocation = field(default_factory=Allocation)
    recovery: RecoveryOptions = field(default_factory=RecoveryOptions)
    exclude: tuple[str, ...] = ()
    steps: int = 1
    verify_rewrite: bool = True
    rescale: bool = True  # ThiNet's least-squares rescaling of the next layer when no reconstruction runs
    seed: int = 0

    def check(self, replaying: bool, have_data: bool) -> None:
        if not replaying:
            self.allocation.check(self.criterion.name)
        if not isinstance(self.steps, int) or self.steps < 1:
            raise OnnxPruneError("--steps must be a positive integer")
        a = self.allocation
        if self.steps > 1 and (replaying or a.sensitivity is not None or a.target_latency is not None):
            raise OnnxPruneError(
                "--steps works with --ratio, --target-macs and --target-params, not with a replayed plan, "
                "--sensitivity or --target-latency"
            )
        r = self.recovery
        if not have_data and (r.reconstruct or r.bias_compensation or r.recalibrate):
            raise OnnxPruneError("--reconstruct, --bias-compensation and --recalibrate need calibration data (--calib)")


_OWN = {f.name for f in fields(PruneOptions)} - {"criterion", "allocation", "recovery"}
_ALLOCATION = {f.name for f in fields(Allocation)}
# ``samples`` means the criterion's samples (ThiNet); reconstruction's is RecoveryOptions(samples=...)
_RECOVERY = {f.name for f in fields(RecoveryOptions)} - {"samples"}


def resolve(
    criterion: str | CriterionOptions | None,
    ratio: float | None,
    options: PruneOptions | None,
    allocation: Allocation | None,
    recovery: RecoveryOptions | None,
    shorthands: dict,
) -> PruneOptions:
    """One PruneOptions from the objects given and the keyword shorthands (which win)."""
    opts = options or PruneOptions()
    if criterion is None or isinstance(criterion, CriterionOptions):
        crit = criterion or opts.criterion
    else:
        crit = CriterionOptions(criterion, opts.criterion.combine)
    alloc, rec = allocation or opts.allocation, recovery or opts.recovery
    own, to_alloc, to_rec, params = {}, {}, {}, dict(crit.params)
    combine = shorthands.pop("combine", crit.combine)
    accepted = get_criterion(crit.name).parameters()
    for key, value in shorthands.items():
        if key in accepted:
            params[key] = value  # weak-layer's nu goes to the criterion and (below) to the allocation
            if key in _ALLOCATION:
                to_alloc[key] = value
        elif key in _OWN:
            own[key] = value
        elif key in _ALLOCATION:
            to_alloc[key] = value
        elif key in _RECOVERY:
            to_rec[key] = value
        else:
            raise OnnxPruneError(
                f"unknown option '{key}': not a setting of prune(), Allocation, RecoveryOptions or criterion "
                f"'{crit.name}' (which takes {', '.join(sorted(accepted)) or 'none'})"
            )
    if ratio is not None:
        to_alloc["ratio"] = ratio
    if "exclude" in own:
        own["exclude"] = tuple(own["exclude"])
    return replace(
        opts,
        criterion=CriterionOptions(crit.name, combine, params),
        allocation=replace(alloc, **to_alloc),
        recovery=replace(rec, **to_rec),
        **own,
    )
