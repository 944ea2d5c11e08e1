"""Atomic model output: a reader never sees a half-written file, and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import onnx

from .errors import OnnxPruneError
from .load import external_files
from .protosize import too_large


def check_output_path(out: str, inputs: list[str]) -> None:
    out_abs = os.path.abspath(out)
    for i in inputs:
        if i and os.path.exists(i) and os.path.exists(out_abs) and os.path.samefile(i, out_abs):
            raise OnnxPruneError(f"-o {out} is the input model; refusing to overwrite the input")
        if i and os.path.abspath(i) == out_abs:
            raise OnnxPruneError(f"-o {out} is the input model; refusing to overwrite the input")
    folder = os.path.dirname(out_abs)
    if not os.path.isdir(folder):
        raise OnnxPruneError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise OnnxPruneError(f"output folder is not writable: {folder}")
    if os.path.isdir(out_abs):
        raise OnnxPruneError(f"-o {out} is a folder")


def save_model(model: onnx.ModelProto, out: str, external: bool | None = None) -> None:
    """Write ``model`` to ``out`` via a temporary folder beside it, then rename into place.

    Models over 2 GB (or with ``external=True``) get their weights in ``<out>.data`` next to the file.
    """
    out_abs = os.path.abspath(out)
    folder = os.path.dirname(out_abs)
    base = os.path.basename(out_abs)
    if external is None:
        external = too_large(model)
    tmp = tempfile.mkdtemp(prefix=".onnxprune-", dir=folder)
    try:
        tmp_model = os.path.join(tmp, base)
        data_name = base + ".data"
        if external:
            onnx.save_model(
                model,
                tmp_model,
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )
            os.replace(os.path.join(tmp, data_name), os.path.join(folder, data_name))
        else:
            onnx.save_model(model, tmp_model)
        os.replace(tmp_model, out_abs)
    except OSError as e:
        raise OnnxPruneError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write(out: str, write, suffix: str = "") -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``out``, then rename it into place."""
    out_abs = os.path.abspath(out)
    folder = os.path.dirname(out_abs)
    if not os.path.isdir(folder):
        raise OnnxPruneError(f"output folder does not exist: {folder}")
    fd, tmp = tempfile.mkstemp(prefix=".onnxprune-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _umask_mode())  # mkstemp creates 0600; a report is as readable as the model beside it
        os.replace(tmp, out_abs)
    except OSError as e:
        raise OnnxPruneError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_json(data: dict, out: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, default=_jsonable)

    atomic_write(out, write, ".json")


def save_text(text: str, out: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(out, write, os.path.splitext(out)[1])


def size_on_disk(path: str) -> int:
    """Bytes of a model file plus the external data files it names."""

    return os.path.getsize(path) + sum(os.path.getsize(f) for f in external_files(path) if os.path.exists(f))


def _jsonable(x):
    import numpy as np

    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _umask_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask
