"""User code named on the command line: ``package.module:function`` or ``path/to/file.py:function``.

Data sources and task metrics are plug-ins of this kind; the file form lets a deploy pipeline keep its
evaluation script beside the model without making it an installed package.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from .errors import OnnxPruneError


def load_callable(target: str, what: str):
    """The callable ``target`` names; one-line errors for every way the name can be wrong."""
    mod, sep, fn = target.rpartition(":")
    if not sep or not mod or not fn:
        raise OnnxPruneError(f"{what} '{target}': expected module:function or path/to/file.py:function")
    try:
        if mod.endswith(".py"):
            if not os.path.isfile(mod):
                raise OnnxPruneError(f"{what} '{target}': file not found: {mod}")
            name = "onnxprune_plugin_" + os.path.splitext(os.path.basename(mod))[0]
            spec = importlib.util.spec_from_file_location(name, mod)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            sys.modules[name] = module
            # the plug-in's own folder first, so its sibling modules import as in a script
            sys.path.insert(0, os.path.dirname(os.path.abspath(mod)))
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(mod)
        obj = getattr(module, fn)
    except OnnxPruneError:
        raise
    except (ImportError, AttributeError, SyntaxError) as e:
        raise OnnxPruneError(f"cannot import {what} '{target}': {e}") from None
    if not callable(obj):
        raise OnnxPruneError(f"{what} '{target}' is not callable")
    return obj
