"""Calibration and evaluation data: every stage that needs data takes the same specs."""

from .sources import DataSpec, batch_rows, batches, open_data

__all__ = ["DataSpec", "batch_rows", "batches", "open_data"]
