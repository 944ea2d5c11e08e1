"""Calibration and evaluation data: every stage that needs data takes the same specs."""

from .sources import DataSpec, batches, open_data

__all__ = ["DataSpec", "batches", "open_data"]
