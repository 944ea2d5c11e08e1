"""onnxprune: post-training structured channel pruning of ONNX graphs, with exact rewrites."""
from .api import analyze, evaluate, load, prune, score_groups
from .data import DataSpec
from .errors import OnnxPruneError, VerificationError
from .groups import Analysis, ChannelGroup
from .plan import PruningPlan
from .report import AnalysisReport, PruneReport

__version__ = "0.1.0"
__all__ = ["analyze", "evaluate", "DataSpec", "load", "prune", "score_groups", "OnnxPruneError", "VerificationError", "Analysis",
           "ChannelGroup", "PruningPlan", "AnalysisReport", "PruneReport"]
