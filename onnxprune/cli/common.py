"""Argument groups shared by subcommands (Polygraphy style) and the error contract of the CLI."""
from __future__ import annotations

import argparse


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="input ONNX model (external data is read from beside it)")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:1x3x224x224",
                   help="concrete shape for an input with dynamic dims (repeatable); a dynamic batch defaults to 1")


def add_selection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exclude", nargs="+", default=[], metavar="GLOB",
                   help="freeze the groups whose source node names match any of these globs")
