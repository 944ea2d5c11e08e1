"""Importing this package registers every rule (one module per op family)."""

from . import concat_split, control, conv, einsum, elementwise, layout, linear, norm, recurrent, spatial  # noqa: F401
