"""Channel-dependency groups: which channels of which tensors and parameters must go together."""

from .analysis import analyse
from .group import Analysis, ChannelGroup, Source
from .registry import RULES, rule

__all__ = ["analyse", "Analysis", "ChannelGroup", "Source", "RULES", "rule"]
