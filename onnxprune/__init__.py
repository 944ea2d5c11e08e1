"""onnxprune: post-training structured channel pruning of ONNX graphs, with exact rewrites."""

from .allocation.allocate import Allocation
from .api import analyze, evaluate, finetune, load, prune, recover, score_groups, sensitivity
from .bench import BenchReport, benchmark
from .criteria import CriterionOptions
from .data import DataSpec
from .errors import OnnxPruneError, VerificationError
from .groups import Analysis, ChannelGroup
from .options import PruneOptions
from .plan import PruningPlan
from .recovery import RecoveryOptions
from .report import AnalysisReport, PruneReport

__version__ = "0.1.0"
__all__ = [
    "analyze",
    "evaluate",
    "DataSpec",
    "load",
    "prune",
    "score_groups",
    "sensitivity",
    "recover",
    "finetune",
    "PruneOptions",
    "CriterionOptions",
    "RecoveryOptions",
    "Allocation",
    "benchmark",
    "BenchReport",
    "OnnxPruneError",
    "VerificationError",
    "Analysis",
    "ChannelGroup",
    "PruningPlan",
    "AnalysisReport",
    "PruneReport",
]
