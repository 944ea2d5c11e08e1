"""Evaluate an ONNX graph with torch, so gradients can flow (the Taylor criterion).

onnx2torch is the library for this, but it fails on current exports (dynamo's opset-18 graphs, Split with
num_outputs, Reshape with allowzero) and pins old torch; this interpreter covers the operators of the
supported zoo, one small function per op, and says which op is missing otherwise.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper

from .errors import OnnxPruneError
from .pads import node_pads

OPS = {}


def op(*names):
    def deco(fn):
        for n in names:
            if n in OPS:
                raise AssertionError(f"torch evaluation: op {n} registered twice ({OPS[n].__name__}, {fn.__name__})")
            OPS[n] = fn
        return fn

    return deco


def attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _ints(t):
    """Integers of a shape-like tensor (numpy, or torch on any device: ``tolist`` copies to the host)."""
    return [int(v) for v in t.reshape(-1).tolist()]


class TorchGraph:
    """Callable over feed dicts; ``keep`` names intermediate tensors to return (with retained grads)."""

    def __init__(
        self, model: onnx.ModelProto, consts: dict[str, np.ndarray], device: str = "cpu", float64: bool = False
    ):
        """``float64`` evaluates every floating tensor in double precision (Casts to a float type included):
        the exactness check's arbiter when float32 rounding alone exceeds its bound."""
        import torch

        self.torch = torch
        self.model = model
        self.device = torch.device(device)
        self.float64 = float64
        self.consts = {k: self._promote(torch.from_numpy(np.array(v)).to(self.device)) for k, v in consts.items()}
        missing = sorted({n.op_type for n in model.graph.node if n.op_type not in OPS})
        if missing:
            raise OnnxPruneError(f"torch evaluation does not support op(s) {', '.join(missing)}")

    def _promote(self, v):
        if (
            self.float64
            and isinstance(v, self.torch.Tensor)
            and v.is_floating_point()
            and v.dtype != self.torch.float64
        ):
            return v.to(self.torch.float64)
        return v

    def run(self, feeds: dict, keep=(), edit: dict | None = None, grad: bool = False):
        """Outputs and the ``keep`` tensors; ``edit`` maps a tensor name to a function applied where it is
        produced (finite-difference checks); ``grad`` makes float inputs require grad so every
        intermediate tensor can retain its gradient."""
        with self.torch.device(self.device):  # tensors the ops create (Shape, Range...) land beside the data
            return self._run(feeds, keep, edit or {}, grad)

    def _run(self, feeds, keep, edit, grad):
        torch = self.torch
        env = dict(self.consts)
        for k, v in feeds.items():
            tv = self._promote(torch.from_numpy(np.asarray(v)).to(self.device))
            if grad and tv.is_floating_point():
                tv.requires_grad_(True)
            env[k] = tv
        kept = {}
        for node in self.model.graph.node:
            ins = [env[i] if i else None for i in node.input]
            outs = OPS[node.op_type](torch, ins, attrs(node), node)
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            for name, val in zip(node.output, outs):
                if name:
                    val = self._promote(val)
                    if name in edit:
                        val = edit[name](val)
                    env[name] = val
                    if name in keep:
                        if val.requires_grad:
                            val.retain_grad()
                        kept[name] = val
            for i in node.input:
                if i in keep and i not in kept:
                    kept[i] = env[i]
        return [env[o.name] for o in self.model.graph.output], kept


# --- element-wise ---------------------------------------------------------------------------------
BIN = {
    "Add": "add",
    "Sub": "sub",
    "Mul": "mul",
    "Pow": "pow",
    "Equal": "eq",
    "Less": "lt",
    "Greater": "gt",
    "LessOrEqual": "le",
    "GreaterOrEqual": "ge",
    "And": "logical_and",
    "Or": "logical_or",
    "Xor": "logical_xor",
}


@op(*BIN)
def _bin(t, x, a, n):
    return getattr(t, BIN[n.op_type])(x[0], x[1])


@op("Div")
def _div(t, x, a, n):
    if not x[0].is_floating_point():
        return t.div(x[0], x[1], rounding_mode="trunc")
    return x[0] / x[1]


@op("Max", "Min", "Sum", "Mean")
def _nary(t, x, a, n):
    out = x[0]
    for y in x[1:]:
        out = {"Max": t.maximum, "Min": t.minimum}.get(n.op_type, t.add)(out, y)
    return out / len(x) if n.op_type == "Mean" else out


UNARY = {
    "Relu": "relu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "Erf": "erf",
    "Exp": "exp",
    "Log": "log",
    "Sqrt": "sqrt",
    "Neg": "neg",
    "Abs": "abs",
    "Reciprocal": "reciprocal",
    "Floor": "floor",
    "Ceil": "ceil",
    "Sin": "sin",
    "Cos": "cos",
    "Not": "logical_not",
    "Sign": "sign",
    "Round": "round",
}


@op(*UNARY)
def _unary(t, x, a, n):
    return getattr(t, UNARY[n.op_type])(x[0])


@op("Identity", "Dropout")
def _identity(t, x, a, n):
    return x[0]


@op("Cast", "CastLike")
def _cast(t, x, a, n):
    to = a["to"] if n.op_type == "Cast" else helper.np_dtype_to_tensor_dtype(x[1].cpu().numpy().dtype)
    return x[0].to(getattr(t, np.dtype(helper.tensor_dtype_to_np_dtype(to)).name.replace("bool", "bool")))


@op("Clip")
def _clip(t, x, a, n):
    lo = x[1] if len(x) > 1 and x[1] is not None else a.get("min")
    hi = x[2] if len(x) > 2 and x[2] is not None else a.get("max")
    return t.clamp(x[0], min=lo, max=hi)


@op("LeakyRelu")
def _leaky(t, x, a, n):
    return t.nn.functional.leaky_relu(x[0], a.get("alpha", 0.01))


@op("HardSigmoid")
def _hsig(t, x, a, n):
    return t.clamp(x[0] * a.get("alpha", 0.2) + a.get("beta", 0.5), 0, 1)


@op("HardSwish")
def _hswish(t, x, a, n):
    return t.nn.functional.hardswish(x[0])


@op("Gelu")
def _gelu(t, x, a, n):
    approx = a.get("approximate", b"none")
    return t.nn.functional.gelu(x[0], approximate=approx.decode() if isinstance(approx, bytes) else approx)


@op("Softplus")
def _softplus(t, x, a, n):
    return t.nn.functional.softplus(x[0])


@op("Elu")
def _elu(t, x, a, n):
    return t.nn.functional.elu(x[0], a.get("alpha", 1.0))


@op("PRelu")
def _prelu(t, x, a, n):
    return t.where(x[0] >= 0, x[0], x[0] * x[1])


@op("Where")
def _where(t, x, a, n):
    return t.where(x[0], x[1], x[2])


# --- linear --------------------------------------------------------------------------------------------
def _pad_for(t, x, pads, value=0.0):
    k = len(pads) // 2
    if not any(pads):
        return x
    flat = []
    for i in reversed(range(k)):
        flat += [pads[i], pads[i + k]]
    return t.nn.functional.pad(x, flat, value=value)


@op("Conv")
def _conv(t, x, a, n):
    w = x[1]
    k = w.dim() - 2
    xin = _pad_for(t, x[0], node_pads(n, x[0].shape[2:], w.shape[2:]))
    f = {1: t.nn.functional.conv1d, 2: t.nn.functional.conv2d, 3: t.nn.functional.conv3d}[k]
    return f(
        xin,
        w,
        x[2] if len(x) > 2 else None,
        stride=a.get("strides", [1] * k),
        dilation=a.get("dilations", [1] * k),
        groups=a.get("group", 1),
    )


@op("ConvTranspose")
def _convt(t, x, a, n):
    w = x[1]
    k = w.dim() - 2
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise OnnxPruneError("torch evaluation: auto_pad SAME_* on ConvTranspose is not supported")
    pads = node_pads(n, x[0].shape[2:], w.shape[2:])
    if pads[:k] != pads[k:]:
        raise OnnxPruneError("torch evaluation: asymmetric ConvTranspose pads")
    f = {1: t.nn.functional.conv_transpose1d, 2: t.nn.functional.conv_transpose2d}[k]
    return f(
        x[0],
        w,
        x[2] if len(x) > 2 else None,
        stride=a.get("strides", [1] * k),
        padding=pads[:k],
        output_padding=a.get("output_padding", [0] * k),
        groups=a.get("group", 1),
        dilation=a.get("dilations", [1] * k),
    )


@op("Gemm")
def _gemm(t, x, a, n):
    A = x[0].T if a.get("transA", 0) else x[0]
    B = x[1].T if a.get("transB", 0) else x[1]
    y = a.get("alpha", 1.0) * (A @ B)
    if len(x) > 2 and x[2] is not None:
        y = y + a.get("beta", 1.0) * x[2]
    return y


@op("MatMul")
def _matmul(t, x, a, n):
    return t.matmul(x[0], x[1])


@op("Einsum")
def _einsum(t, x, a, n):
    eq = a["equation"]
    return t.einsum(eq.decode() if isinstance(eq, bytes) else eq, *x)


# --- normalisation -------------------------------------------------------------------------------------
@op("BatchNormalization")
def _bn(t, x, a, n):
    return t.nn.functional.batch_norm(x[0], x[3], x[4], x[1], x[2], False, 0.0, a.get("epsilon", 1e-5))


@op("InstanceNormalization")
def _inorm(t, x, a, n):
    return t.nn.functional.instance_norm(x[0], weight=x[1], bias=x[2], eps=a.get("epsilon", 1e-5))


@op("LayerNormalization")
def _lnorm(t, x, a, n):
    axis = a.get("axis", -1) % x[0].dim()
    shape = list(x[0].shape[axis:])
    return t.nn.functional.layer_norm(x[0], shape, x[1], x[2] if len(x) > 2 else None, a.get("epsilon", 1e-5))


@op("Softmax", "LogSoftmax")
def _softmax(t, x, a, n):
    f = t.softmax if n.op_type == "Softmax" else t.log_softmax
    return f(x[0], dim=a.get("axis", -1))


# --- recurrent -----------------------------------------------------------------------------------------
#: ONNX's names of the activations a recurrent op may list, as torch functions; the defaults per op
_ACT = {"Sigmoid": "sigmoid", "Tanh": "tanh", "Relu": "relu"}
_DEFAULT_ACT = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}


def _recurrent_setup(t, x, a, n):
    """(X as (seq, batch, in), W, R, B, initial state(s) as (dirs, batch, hidden), directions, activations)."""
    op = n.op_type
    if a.get("input_forget", 0):
        raise OnnxPruneError(f"torch evaluation: {op} with input_forget")
    if a.get("activation_alpha") or a.get("activation_beta"):
        raise OnnxPruneError(f"torch evaluation: {op} activations with alpha/beta")
    layout = a.get("layout", 0)
    xs = x[0].transpose(0, 1) if layout else x[0]
    direction = a.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    dirs = ["forward", "reverse"] if direction == "bidirectional" else [direction]
    names = [v.decode() if isinstance(v, bytes) else v for v in a.get("activations", [])]
    names = names or _DEFAULT_ACT[op] * len(dirs)
    if any(v not in _ACT for v in names):
        raise OnnxPruneError(f"torch evaluation: {op} activation(s) {sorted(set(names) - set(_ACT))}")
    per = len(_DEFAULT_ACT[op])
    acts = [[getattr(t, _ACT[v]) for v in names[d * per : (d + 1) * per]] for d in range(len(dirs))]
    lens = x[4] if len(x) > 4 else None
    if lens is not None and bool((lens != xs.shape[0]).any()):
        raise OnnxPruneError(f"torch evaluation: {op} with sequence_lens shorter than the sequence")
    hidden = int(a["hidden_size"])
    states = []
    for k in (5, 6) if op == "LSTM" else (5,):
        s0 = x[k] if len(x) > k and x[k] is not None else None
        if s0 is None:
            s0 = t.zeros((len(dirs), xs.shape[1], hidden), dtype=xs.dtype)
        states.append(s0.transpose(0, 1) if layout else s0)
    b = x[3] if len(x) > 3 and x[3] is not None else t.zeros((len(dirs), 2 * x[1].shape[1]), dtype=xs.dtype)
    return xs, x[1], x[2], b, states, dirs, acts, layout


def _recurrent_out(t, ys, finals, layout):
    """Y (seq, dirs, batch, hidden) and the final states, in the op's layout."""
    y = t.stack(ys, 1)
    if layout:
        return [y.permute(2, 0, 1, 3), *[f.transpose(0, 1) for f in finals]]
    return [y, *finals]


def _clip(t, v, a):
    c = a.get("clip")
    return v if c is None else t.clamp(v, -c, c)


@op("LSTM", "GRU", "RNN")
def _recurrent(t, x, a, n):
    """ONNX's LSTM (gates i, o, f, c; peepholes), GRU (z, r, h; linear_before_reset) and RNN, one step at a
    time: plain torch ops, so float64 and gradients work as for every other op (torch.nn.LSTM orders its
    gates i, f, g, o and has no peepholes or clip)."""
    xs, w, r, b, states, dirs, acts, layout = _recurrent_setup(t, x, a, n)
    hidden = int(a["hidden_size"])
    steps = xs.shape[0]
    ys, finals = [], [[] for _ in states]
    for d, direction in enumerate(dirs):
        wb, rb = b[d, : b.shape[1] // 2], b[d, b.shape[1] // 2 :]
        xw = t.matmul(xs, w[d].T) + wb  # every step's input projection at once
        h = states[0][d]
        c = states[1][d] if n.op_type == "LSTM" else None
        p = x[7][d] if n.op_type == "LSTM" and len(x) > 7 and x[7] is not None else None
        pi, po, pf = p.split(hidden) if p is not None else (0, 0, 0)  # peepholes
        out = [None] * steps
        for step in range(steps) if direction == "forward" else reversed(range(steps)):
            if n.op_type == "LSTM":
                f, g, hh = acts[d]
                z = xw[step] + t.matmul(h, r[d].T) + rb
                zi, zo, zf, zc = z.split(hidden, -1)
                i = f(_clip(t, zi + pi * c, a))
                fg = f(_clip(t, zf + pf * c, a))
                c = fg * c + i * g(_clip(t, zc, a))
                o = f(_clip(t, zo + po * c, a))
                h = o * hh(c)
            elif n.op_type == "GRU":
                f, g = acts[d]
                xz, xr, xh = xw[step].split(hidden, -1)
                rz, rr, rh = r[d].split(hidden, 0)
                bz, br, bh = rb.split(hidden)
                zg = f(_clip(t, xz + t.matmul(h, rz.T) + bz, a))
                rg = f(_clip(t, xr + t.matmul(h, rr.T) + br, a))
                if a.get("linear_before_reset", 0):
                    cand = g(_clip(t, xh + rg * (t.matmul(h, rh.T) + bh), a))
                else:
                    cand = g(_clip(t, xh + t.matmul(rg * h, rh.T) + bh, a))
                h = (1 - zg) * cand + zg * h
            else:
                h = acts[d][0](_clip(t, xw[step] + t.matmul(h, r[d].T) + rb, a))
            out[step] = h
        ys.append(t.stack(out, 0))
        finals[0].append(h)
        if c is not None:
            finals[1].append(c)
    return _recurrent_out(t, ys, [t.stack(f, 0) for f in finals], layout)


# --- pooling -------------------------------------------------------------------------------------------
@op("MaxPool", "AveragePool")
def _pool(t, x, a, n):
    k = len(a["kernel_shape"])
    pads = node_pads(n, x[0].shape[2:], a["kernel_shape"])
    fill = -math.inf if n.op_type == "MaxPool" else 0.0
    xin = _pad_for(t, x[0], pads, fill)
    F = t.nn.functional
    stride = a.get("strides", [1] * k)
    if n.op_type == "MaxPool":
        f = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[k]
        return f(xin, a["kernel_shape"], stride, 0, a.get("dilations", [1] * k), bool(a.get("ceil_mode", 0)))
    if any(pads) and not a.get("count_include_pad", 0):
        ones = _pad_for(t, t.ones_like(x[0][:1, :1]), pads, 0.0)
        f = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[k]
        s = f(xin, a["kernel_shape"], stride, 0, bool(a.get("ceil_mode", 0)), True)
        c = f(ones, a["kernel_shape"], stride, 0, bool(a.get("ceil_mode", 0)), True)
        return s / c
    f = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[k]
    return f(xin, a["kernel_shape"], stride, 0, bool(a.get("ceil_mode", 0)), True)


@op("GlobalAveragePool", "GlobalMaxPool")
def _gpool(t, x, a, n):
    dims = tuple(range(2, x[0].dim()))
    return x[0].mean(dims, keepdim=True) if n.op_type == "GlobalAveragePool" else x[0].amax(dims, keepdim=True)


def _axes(x, a, default_all, rank):
    axes = a.get("axes")
    if axes is None and len(x) > 1 and x[1] is not None:
        axes = _ints(x[1])
    if not axes:
        return None if a.get("noop_with_empty_axes", 0) else list(range(rank)) if default_all else []
    return [v % rank for v in axes]


@op("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceProd")
def _reduce(t, x, a, n):
    axes = _axes(x, a, True, x[0].dim())
    if axes is None:
        return x[0]
    keep = bool(a.get("keepdims", 1))
    v = x[0]
    if n.op_type == "ReduceMean":
        return v.mean(axes, keepdim=keep)
    if n.op_type == "ReduceSum":
        return v.sum(axes, keepdim=keep)
    if n.op_type == "ReduceMax":
        return v.amax(axes, keepdim=keep)
    if n.op_type == "ReduceMin":
        return v.amin(axes, keepdim=keep)
    if n.op_type == "ReduceL2":
        return (v * v).sum(axes, keepdim=keep).sqrt()
    for ax in sorted(axes, reverse=True):
        v = v.prod(ax, keepdim=keep)
    return v


# --- layout --------------------------------------------------------------------------------------------
@op("Reshape")
def _reshape(t, x, a, n):
    shape = _ints(x[1])
    if not a.get("allowzero", 0):
        shape = [x[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x[0].reshape(shape)


@op("Flatten")
def _flatten(t, x, a, n):
    ax = a.get("axis", 1) % max(x[0].dim(), 1)
    return x[0].reshape(int(np.prod(x[0].shape[:ax])), -1)


@op("Transpose")
def _transpose(t, x, a, n):
    return x[0].permute(a.get("perm", list(range(x[0].dim()))[::-1]))


@op("Squeeze")
def _squeeze(t, x, a, n):
    axes = a.get("axes") or (_ints(x[1]) if len(x) > 1 and x[1] is not None else None)
    if axes is None:
        return x[0].squeeze()
    out = x[0]
    for ax in sorted((v % x[0].dim() for v in axes), reverse=True):
        out = out.squeeze(ax)
    return out


@op("Unsqueeze")
def _unsqueeze(t, x, a, n):
    axes = a.get("axes") or _ints(x[1])
    out = x[0]
    rank = x[0].dim() + len(axes)
    for ax in sorted(v % rank for v in axes):
        out = out.unsqueeze(ax)
    return out


@op("Concat")
def _concat(t, x, a, n):
    return t.cat([v for v in x if v is not None], dim=a["axis"])


@op("Split")
def _split(t, x, a, n):
    axis = a.get("axis", 0)
    dim = x[0].shape[axis]
    if len(x) > 1 and x[1] is not None:
        sizes = _ints(x[1])
    elif "split" in a:
        sizes = list(a["split"])
    else:
        k = a.get("num_outputs", len(n.output))
        step = -(-dim // k)
        sizes = [min(step, dim - i * step) for i in range(k)]
    return list(t.split(x[0], sizes, dim=axis))


@op("Slice")
def _slice(t, x, a, n):
    starts, ends = _ints(x[1]), _ints(x[2])
    axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(len(starts)))
    steps = _ints(x[4]) if len(x) > 4 and x[4] is not None else [1] * len(starts)
    out = x[0]
    for s, e, ax, st in zip(starts, ends, axes, steps):
        dim = out.shape[ax]
        rng = range(dim)[slice(s if abs(s) < 2**62 else (None if s > 0 else 0), e if abs(e) < 2**62 else None, st)]
        idx = t.tensor(list(rng), dtype=t.long)
        out = out.index_select(ax % out.dim(), idx)
    return out


@op("Gather")
def _gather(t, x, a, n):
    ax = a.get("axis", 0) % x[0].dim()
    idx = x[1].long()
    idx = t.where(idx < 0, idx + x[0].shape[ax], idx)
    out = x[0].index_select(ax, idx.reshape(-1))
    return out.reshape(list(x[0].shape[:ax]) + list(idx.shape) + list(x[0].shape[ax + 1 :]))


@op("Expand")
def _expand(t, x, a, n):
    shape = _ints(x[1])
    return x[0] * t.ones(shape, dtype=x[0].dtype) if x[0].dtype != t.bool else x[0].expand(*shape)


@op("Tile")
def _tile(t, x, a, n):
    return x[0].repeat(*_ints(x[1]))


@op("Shape")
def _shape(t, x, a, n):
    dims = list(x[0].shape)[a.get("start", 0) : a.get("end", None)]
    return t.tensor(dims, dtype=t.long)


@op("Pad")
def _pad(t, x, a, n):
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = _ints(x[1])
    value = float(x[2].item()) if len(x) > 2 and x[2] is not None else 0.0
    if mode == "constant":
        return _pad_for(t, x[0], pads, value)
    k = len(pads) // 2
    padded = [i for i in range(k) if pads[i] or pads[i + k]]
    if not padded:
        return x[0]
    first = padded[0]
    if k - first > 3:
        raise OnnxPruneError(f"torch evaluation: Pad mode {mode} over more than 3 trailing axes")
    flat = []
    for i in reversed(range(first, k)):
        flat += [pads[i], pads[i + k]]
    # torch pads the trailing axes of a (batch, channel, ...) tensor: the axes in front become the channels
    lead = tuple(x[0].shape[:first])
    y = x[0].reshape(1, math.prod(lead), *x[0].shape[first:])
    y = t.nn.functional.pad(y, flat, mode={"reflect": "reflect", "edge": "replicate"}[mode])
    return y.reshape(*lead, *y.shape[2:])


@op("Resize")
def _resize(t, x, a, n):
    mode = a.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    sizes = _ints(x[3]) if len(x) > 3 and x[3] is not None else None
    if sizes is None:
        scales = x[2].tolist()
        sizes = [int(math.floor(d * s)) for d, s in zip(x[0].shape, scales)]
    if list(sizes[:2]) != list(x[0].shape[:2]):
        raise OnnxPruneError("torch evaluation: Resize of batch/channel axes")
    ctm = a.get("coordinate_transformation_mode", b"half_pixel")
    ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
    if mode == "nearest":
        return t.nn.functional.interpolate(x[0], size=sizes[2:], mode="nearest")
    return t.nn.functional.interpolate(
        x[0], size=sizes[2:], mode="bilinear" if len(sizes) == 4 else "linear", align_corners=ctm == "align_corners"
    )


@op("ConstantOfShape")
def _cos(t, x, a, n):
    val = a.get("value")
    arr = onnx.numpy_helper.to_array(val) if val is not None else np.zeros(1, np.float32)
    return t.full(_ints(x[0]), float(arr.reshape(-1)[0]), dtype=t.from_numpy(np.array(arr)).dtype)  # a writable copy


@op("Range")
def _range(t, x, a, n):
    return t.arange(x[0].item(), x[1].item(), x[2].item(), dtype=x[0].dtype)
