"""Knowledge-distillation fine-tuning of a pruned ONNX model towards the original, through torch.

The pruned graph is evaluated by the torch interpreter (torch_eval.py) with its weights as leaf tensors
that require grad; the teacher (the original model) runs in onnxruntime. Loss: Hinton's KL divergence
between temperature-softened outputs (times T^2 so gradients keep their scale) on the logits in front of
a final Softmax or Sigmoid (see ``distill_head``), plus ``label_weight`` x cross-entropy when the data has
labels. Only weights change: the trained tensors are written back into
the same initializers, so the graph's structure -- and the exactness proof of the rewrite -- stand.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..data import open_data
from ..errors import OnnxPruneError
from ..progress import bar as progress_bar
from ..runtime import is_in_memory_stub, materialise, session_with_outputs
from ..torch_eval import TorchGraph

#: inputs that hold learnable parameters, per op type
TRAINABLE = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (1, 2),
    "MatMul": (0, 1),
    "BatchNormalization": (1, 2),
    "LayerNormalization": (1, 2),
    "InstanceNormalization": (1, 2),
    "PRelu": (1,),
    "LSTM": (1, 2, 3, 7),  # W, R, B and the peepholes
    "GRU": (1, 2, 3),
    "RNN": (1, 2, 3),
}


@dataclass
class FinetuneResult:
    model: onnx.ModelProto
    epochs: list[dict] = field(default_factory=list)  # per epoch: loss, kl on held-out data, seconds
    parameters: int = 0


def trainable_names(model: onnx.ModelProto, consts: dict) -> list[str]:
    """Float constants in learnable positions, plus biases added after a MatMul (transformer Linear)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    names = set()
    for node in model.graph.node:
        for k in TRAINABLE.get(node.op_type, ()):
            if k < len(node.input) and node.input[k] in consts:
                names.add(node.input[k])
        if node.op_type == "Add":
            for k, other in ((0, 1), (1, 0)):
                p = producers.get(node.input[other])
                if node.input[k] in consts and p is not None and p.op_type == "MatMul":
                    names.add(node.input[k])
    return sorted(n for n in names if np.issubdtype(np.asarray(consts[n]).dtype, np.floating))


@dataclass(frozen=True)
class Head:
    """What is distilled: ``tensor`` (the logits in front of a final Softmax/Sigmoid, else the output) and
    how: ``softmax`` (KL between temperature-softened distributions along ``axis``, at every other
    position: a classifier's classes, a CTC head's characters per time step), ``sigmoid`` (binary KL per
    element: segmentation maps), ``regression`` (squared error over the teacher's variance)."""

    tensor: str
    kind: str
    axis: int = -1
    flatten: bool = False  # opset < 13 Softmax: one distribution over all axes from ``axis`` on


def distill_head(model: onnx.ModelProto) -> Head:
    """The head of the first output. Deployed models often end in a probability (softmax, sigmoid, CTC
    probabilities); a loss written for logits on those compares near-one-hot vectors (and printed a
    negative loss on PP-OCR's recogniser), so the logits in front are distilled instead."""
    out = model.graph.output[0].name
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers.get(out)
    while node is not None and node.op_type == "Identity":
        out, node = node.input[0], producers.get(node.input[0])
    opset = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 13)
    if node is not None and node.op_type in ("Softmax", "LogSoftmax"):
        axis = next((int(a.i) for a in node.attribute if a.name == "axis"), -1 if opset >= 13 else 1)
        return Head(node.input[0], "softmax", axis, flatten=opset < 13)
    if node is not None and node.op_type == "Sigmoid":
        return Head(node.input[0], "sigmoid")
    rank = len(model.graph.output[0].type.tensor_type.shape.dim)
    return Head(out, "softmax", -1) if rank == 2 else Head(out, "regression")


def distill_loss(torch, head: Head, student, teacher, temperature: float):
    """Mean over positions and batch of the head's divergence (times T^2 for the KL kinds, as Hinton)."""
    f = torch.nn.functional
    student, teacher = student.float(), teacher.float()
    if head.kind == "regression":
        return f.mse_loss(student, teacher) / (teacher.var() + 1e-12)
    t2 = temperature**2
    if head.kind == "sigmoid":
        ls, lt = student / temperature, teacher / temperature
        pt = torch.sigmoid(lt)
        kl = pt * (f.logsigmoid(lt) - f.logsigmoid(ls)) + (1 - pt) * (f.logsigmoid(-lt) - f.logsigmoid(-ls))
        return kl.mean() * t2
    axis = head.axis % student.dim()
    if head.flatten:
        student, teacher = student.reshape(*student.shape[:axis], -1), teacher.reshape(*teacher.shape[:axis], -1)
    s = f.log_softmax(student / temperature, dim=axis)
    t = f.log_softmax(teacher / temperature, dim=axis)
    return (t.exp() * (t - s)).sum(dim=axis).mean() * t2


def held_out_kl(graph, teacher_session, data, temperature: float = 1.0, head: Head | None = None) -> float:
    """Mean divergence of the head (see ``Head``) between teacher and student at temperature T over
    ``data``; both run in onnxruntime."""
    import torch

    head = head or distill_head(graph.model)
    sess = session_with_outputs(graph.model, [head.tensor], graph.consts)
    total, n = 0.0, 0
    for feeds, _ in open_data(data, graph):
        s = torch.from_numpy(np.asarray(sess.run([head.tensor], feeds)[0]))
        t = torch.from_numpy(np.asarray(teacher_session.run([head.tensor], feeds)[0]))
        total += float(distill_loss(torch, head, s, t, temperature)) * len(s)
        n += len(s)
    return total / max(n, 1)


def finetune(
    student_graph,
    teacher_graph,
    data,
    *,
    epochs: int = 1,
    lr: float = 1e-4,
    temperature: float = 4.0,
    label_weight: float = 0.0,
    device: str = "cpu",
    eval_data=None,
    weight_decay: float = 0.0,
    progress: bool = True,
    log=print,
) -> FinetuneResult:
    """Distil ``teacher_graph`` into ``student_graph`` (both normalised Graphs with the same inputs)."""
    try:
        import torch
    except ImportError:
        raise OnnxPruneError("finetune needs torch: pip install 'onnxprune[torch]'") from None

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise OnnxPruneError("--device cuda: torch sees no CUDA device here (use --device cpu)")
    if epochs < 1 or lr <= 0 or temperature <= 0:
        raise OnnxPruneError("--epochs must be >= 1, --lr and --temperature > 0")
    names = trainable_names(student_graph.model, student_graph.consts)
    if not names:
        raise OnnxPruneError("the model has no trainable weights (no Conv/Gemm/MatMul/normalisation constants)")
    tg = TorchGraph(student_graph.model, student_graph.consts, device)
    params = []
    for n in names:
        p = tg.consts[n].float() if tg.consts[n].dtype != torch.float32 else tg.consts[n]
        p = p.clone().requires_grad_(True)
        tg.consts[n] = p
        params.append(p)
    head = distill_head(student_graph.model)
    teacher = session_with_outputs(teacher_graph.model, [head.tensor], teacher_graph.consts)
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    result = FinetuneResult(student_graph.model, parameters=int(sum(p.numel() for p in params)))
    if eval_data is not None:
        kl0 = held_out_kl(student_graph, teacher, eval_data, head=head)
        log(f"epoch 0: held-out KL {kl0:.4f}")
        result.epochs.append({"epoch": 0, "held_out_kl": kl0})
    for epoch in range(1, epochs + 1):
        t0, total, seen = time.perf_counter(), 0.0, 0
        bar = progress_bar(
            open_data(data, student_graph), desc=f"finetune epoch {epoch}/{epochs}", unit="batch", enabled=progress
        )
        for feeds, labels in bar:
            with torch.no_grad():
                target = torch.from_numpy(np.asarray(teacher.run([head.tensor], feeds)[0])).to(tg.device)
            outs, kept = tg.run(feeds, keep={head.tensor})
            out = outs[0]
            loss = distill_loss(torch, head, kept.get(head.tensor, out), target, temperature)
            if label_weight and labels is not None:
                y = torch.as_tensor(np.asarray(labels)).long().reshape(-1).to(tg.device)
                loss = loss + label_weight * torch.nn.functional.cross_entropy(out.reshape(len(y), -1), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            batch = len(out)
            total += float(loss.detach()) * batch
            seen += batch
            bar.set_postfix(loss=f"{total / seen:.4f}")
        _write_back(student_graph, tg, names)
        entry = {"epoch": epoch, "loss": total / max(seen, 1), "seconds": round(time.perf_counter() - t0, 2)}
        if eval_data is not None:
            entry["held_out_kl"] = held_out_kl(student_graph, teacher, eval_data, head=head)
        line = f"epoch {epoch}: loss {entry['loss']:.4f}"
        if "held_out_kl" in entry:
            line += f", held-out KL {entry['held_out_kl']:.4f}"
        log(line + f", {entry['seconds']:.1f} s")
        result.epochs.append(entry)
    result.model = materialise(student_graph.model, student_graph.consts)  # self-contained, to be saved
    return result


def _write_back(graph, tg, names) -> None:
    """Trained tensors into the initializers of the same names (dtype kept); ``graph.consts`` follows."""
    inits = {t.name: t for t in graph.model.graph.initializer}
    for n in names:
        arr = tg.consts[n].detach().cpu().numpy().astype(np.asarray(graph.consts[n]).dtype)
        if not np.all(np.isfinite(arr)):
            raise OnnxPruneError(f"fine-tuning diverged (non-finite weights in '{n}'): lower --lr")
        graph.consts[n] = arr
        if n in inits and not is_in_memory_stub(inits[n]):  # a stub takes its value from graph.consts
            inits[n].CopyFrom(numpy_helper.from_array(arr, n))
