"""Export torchvision classification models to ONNX with either exporter (random weights).

Used by the README demo, the property tests and the zoo benchmark; torch is imported lazily so the
rest of onnxprune never needs it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings

# Input sizes for architectures that need more than the default (fixed position embeddings, deep
# downsampling); everything else runs at 64x64 to keep tests fast.
SIZES = {
    "alexnet": 224,
    "vgg11": 224,
    "vgg11_bn": 224,
    "vgg13": 224,
    "vgg13_bn": 224,
    "vgg16": 224,
    "vgg16_bn": 224,
    "vgg19": 224,
    "vgg19_bn": 224,
    "inception_v3": 96,
    "maxvit_t": 224,
    "swin_t": 224,
    "swin_s": 224,
    "swin_b": 224,
    "swin_v2_t": 256,
    "swin_v2_s": 256,
    "swin_v2_b": 256,
}
VIT_SIZE = 224


def classification_models() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def input_size(name: str) -> int:
    if name.startswith("vit_"):
        return VIT_SIZE
    return SIZES.get(name, 64)


def export(
    name: str,
    path: str,
    dynamo: bool = False,
    size: int | None = None,
    batch_dynamic: bool = True,
    opset: int | None = None,
    batch: int = 2,
) -> str:
    """Export torchvision model ``name`` (random weights, eval mode) to ``path``; returns ``path``."""
    import torch
    import torchvision

    size = size or input_size(name)
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    x = torch.randn(batch, 3, size, size)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch").setLevel(logging.ERROR)
        if dynamo:
            dyn = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}} if batch_dynamic else None
            torch.onnx.export(
                model,
                (x,),
                path,
                dynamo=True,
                input_names=["x"],
                output_names=["logits"],
                dynamic_shapes=dyn,
                opset_version=opset or 18,
                verbose=False,
            )
        else:
            dyn = {"x": {0: "batch"}, "logits": {0: "batch"}} if batch_dynamic else None
            torch.onnx.export(
                model,
                (x,),
                path,
                dynamo=False,
                input_names=["x"],
                output_names=["logits"],
                dynamic_axes=dyn,
                opset_version=opset or 17,
            )
    return path
