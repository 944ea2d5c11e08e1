"""One propagation of the pruned model over the calibration set, stopping wherever recovery edits a node.

Sequential refitting (He et al. 2017) needs every layer to see the already recovered layers upstream.
Running the whole pruned model once per layer (or per wave) costs a chain of N layers N forward passes;
here the graph is cut in front of each node to edit, every *segment* between two cuts runs once over all
batches as a small extracted model, and only the *frontier* (tensors a later node still reads) is kept,
spilled to disk past a memory budget. The whole recovery then costs about one forward pass of the pruned
model, whatever the depth.

Where a segment's outputs hold more bytes than it reads (an inverted residual's 1x1 expansion: 16 channels
in, 96 out) and its layers are cheap to run again, they are not kept: the segment stays *pending* and
whoever reads them (a refit, a statistic) gets them recomputed batch by batch from the kept inputs, and the
next segment runs on from those inputs too. Why: the frontier is fresh memory, and fresh pages are what
such a model's propagation spends its time on (mobilenet_v2 over 4,096 Fashion-MNIST images: one 28x28
expanded tensor of 784 MB took 2.2 of the propagation's 4.8 s on this VM, its convolutions a tenth of
that), while a 1x1 expansion from a narrow input or a depthwise layer reads a few values per output. A
layer reading many (a VGG's 3x3 convolution over 64 channels: 576) is cheaper kept than run twice: vgg11's
propagation measured 6.6 s kept against 10.0 s recomputed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np
import onnx
from onnx import helper

from ..groups.rules.control import implicit_reads
from ..load import elem_types
from ..runtime import (
    CONCURRENT_BATCHES,
    intermediate_optimization,
    make_session,
    release_shared_arena,
    runs_in_order,
    threads_per_run,
)

DEFAULT_BUDGET_FRACTION = 0.4  # of the memory available when recovery starts

#: a segment whose outputs hold more than this times the bytes of the kept tensors it reads is left pending
#: and recomputed where read (see the module's docstring); at most ``MAX_PENDING`` segments in a row, so a
#: tensor is never recomputed through more than that many refitted layers
RECOMPUTE_GROWTH = 1.0
MAX_PENDING = 2
#: ... and only when every layer in it reads at most this many values per output value (``_cheap``)
RECOMPUTE_MAX_READS = 32

#: ops whose cost per output is not read off their weight (``_cheap`` treats them as dear)
_DEAR = {
    "ConvTranspose",
    "LSTM",
    "GRU",
    "RNN",
    "Attention",
    "MultiHeadAttention",
    "Einsum",
    "ConvInteger",
    "QLinearConv",
    "MatMulInteger",
    "QLinearMatMul",
}


def add_channel_sums(acc: list | None, v, axis: int) -> list:
    """[shift, sum, sum of squares, count] per channel of ``v`` along ``axis`` (sums of ``v - shift``),
    added to ``acc``.

    Why not plain float64 sums: converting every activation to float64 doubled the cost of the
    statistics (resnet50's recalibration). Plain float32 sums lose a nearly constant channel's variance
    to cancellation (1e-2 relative error measured), so the data is shifted by the first block's
    per-channel mean (the shifted-data algorithm) and summed in float32 only along the innermost axis
    (a few hundred values: ~1e-7 relative), the partial sums then added in float64. Rows go a few at a
    time, so the shifted copy stays small enough for the allocator to reuse (whole batches of it took
    fresh pages from the kernel each time: 2x slower)."""
    x = np.asarray(v)
    if x.dtype != np.float32:
        x = x.astype(np.float64)
    ax = axis % x.ndim
    if ax == 0 or x.ndim < 2:
        return _add_block(acc, x, ax)
    step = max(1, _BLOCK_BYTES // max(x[:1].nbytes, 1))
    for r in range(0, len(x), step):
        acc = _add_block(acc, x[r : r + step], ax)
    assert acc is not None
    return acc


_BLOCK_BYTES = 8 << 20


def _add_block(acc: list | None, x: np.ndarray, ax: int) -> list:
    others = tuple(a for a in range(x.ndim) if a != ax)
    shape = [1] * x.ndim
    shape[ax] = x.shape[ax]
    if acc is None:
        acc = [x.mean(others, dtype=np.float64).astype(x.dtype), 0.0, 0.0, 0]
    d = x - acc[0].reshape(shape)
    idx = "abcdefghijklmnop"[: x.ndim]
    drop = x.ndim - 1 if ax != x.ndim - 1 else x.ndim - 2  # the innermost axis other than the channels
    inner = idx if drop < 0 else idx.replace(idx[drop], "")
    s1 = np.einsum(f"{idx}->{inner}", d)
    s2 = np.einsum(f"{idx},{idx}->{inner}", d, d)  # no squared temporary
    keep = inner.index(idx[ax])
    rest = tuple(a for a in range(len(inner)) if a != keep)
    count = x.size // x.shape[ax]
    return [acc[0], acc[1] + s1.sum(rest, dtype=np.float64), acc[2] + s2.sum(rest, dtype=np.float64), acc[3] + count]


class ChannelSums:
    """Collects per-channel sums of tensors during a pass (``stream``): ``axes[name]`` is the channel
    axis of each tensor; calling it takes one batch of them (a name read in another chunk of the same
    pass is absent from that call)."""

    def __init__(self, axes: dict[str, int]):
        self.axes = axes
        self.names = sorted(axes)
        self.acc: dict[str, list] = {}

    def __call__(self, b: int, arrs: dict, rows=None) -> None:
        for name, arr in arrs.items():
            if name in self.axes:
                self.acc[name] = add_channel_sums(self.acc.get(name), arr, self.axes[name])

    def moments(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {name: mean_var(a) for name, a in self.acc.items()}


def mean_var(acc: list) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population variance from ``add_channel_sums``."""
    m = acc[1] / acc[3]
    return acc[0].astype(np.float64) + m, np.maximum(acc[2] / acc[3] - m * m, 0.0)


def available_memory() -> int:
    """Bytes of memory available now (Linux: MemAvailable; elsewhere the physical pages free)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def default_budget() -> int:
    return int(DEFAULT_BUDGET_FRACTION * available_memory())


class Propagation:
    """The pruned ``model`` (edited between calls) run over ``batches`` (list of (feeds, labels)) up to a
    node at a time. ``run_until(node)`` executes every node before it not yet executed; ``tensor(name)``
    gives the per-batch values of a frontier tensor (kept, or recomputed from a pending segment's inputs
    as they are read); ``update(name, fn)`` rewrites them in place (an affine correction of a layer's
    output that was just recalibrated in its weights). ``recompute=False`` keeps every segment's outputs.
    """

    def __init__(self, model: onnx.ModelProto, batches, budget: int | None = None, recompute: bool = True):
        self.model = model
        self.nodes = list(model.graph.node)
        self.position = {n.name: k for k, n in enumerate(self.nodes)}
        self.n_batches = len(batches)
        self.budget = default_budget() if budget is None else budget
        self.cur = 0
        self.in_memory = 0
        self.spill_dir: str | None = None
        self.spilled = 0  # tensors written to disk so far (names their files)
        self.frontier: dict[str, list] = {}
        self.recompute = recompute
        self.pending_from: int | None = None  # first node of the segments run but not kept
        self.pending = 0  # how many segments in a row
        self.virtual: set[str] = set()  # their outputs a later node reads, recomputed where read
        self.peak_in_memory = 0
        self.seconds_run = 0.0
        self.segments = 0
        last: dict[str, int] = {}
        for k, node in enumerate(self.nodes):
            for name in list(node.input) + sorted(implicit_reads(node)):
                if name:
                    last[name] = k
        for o in model.graph.output:  # graph outputs stay readable to the end (a recalibrated last layer)
            last[o.name] = len(self.nodes)
        self.last_use = last
        self.types = elem_types(model)
        self.weight_dims = {t.name: tuple(t.dims) for t in model.graph.initializer}
        for name in {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}:
            if name in last:
                self._store(name, [np.asarray(feeds[name]) for feeds, _ in batches])

    # --- storage ---------------------------------------------------------------------------------------
    def _store(self, name: str, values: list[np.ndarray]) -> None:
        size = sum(v.nbytes for v in values)
        if self.in_memory + size > self.budget:
            if self.spill_dir is None:
                self.spill_dir = tempfile.mkdtemp(prefix="onnxprune-frontier-")
            paths = []
            self.spilled += 1
            for b, v in enumerate(values):
                p = os.path.join(self.spill_dir, f"{self.spilled}_{b}.npy")
                np.save(p, v)
                paths.append(p)
            self.frontier[name] = paths
        else:
            self.frontier[name] = values
            self.in_memory += size
            self.peak_in_memory = max(self.peak_in_memory, self.in_memory)

    def holds(self, name: str) -> bool:
        """Whether a later node reads ``name`` and ``tensor`` can give it."""
        return name in self.frontier or name in self.virtual

    def tensor(self, name: str):
        """The per-batch values of ``name``: a list, or for a pending segment's output an iterable that
        recomputes each batch as it is read (``len`` is the number of batches)."""
        if name in self.virtual:
            return _Recomputed(self, name)
        vals = self.frontier[name]
        return [np.load(v, mmap_mode="r") if isinstance(v, str) else v for v in vals]

    def update(self, name: str, fn) -> None:
        if name in self.virtual:  # recomputed from the edited weights wherever it is read: nothing to rewrite
            return
        vals = self.frontier.pop(name)
        self.in_memory -= sum(v.nbytes for v in vals if not isinstance(v, str))
        out = []
        for v in vals:
            if isinstance(v, str):  # a spilled batch: read, then its file is rewritten under a new name
                arr = np.load(v)
                os.remove(v)
                out.append(fn(arr))
            else:
                out.append(fn(np.asarray(v)))
        self._store(name, out)

    def _drop_dead(self) -> None:
        # a pending segment still reads its inputs from the frontier
        alive_from = self.cur if self.pending_from is None else self.pending_from
        for name in [n for n in self.frontier if self.last_use.get(n, -1) < alive_from]:
            vals = self.frontier.pop(name)
            for v in vals:
                if isinstance(v, str):
                    os.remove(v)
                else:
                    self.in_memory -= v.nbytes

    # --- execution -------------------------------------------------------------------------------------
    def run_until(self, node_name: str | None) -> None:
        """Execute the nodes from the current position up to (not including) ``node_name`` (None: to the
        end); afterwards the frontier holds every tensor a node from there on reads."""
        self._run_to(len(self.nodes) if node_name is None else self.position[node_name])

    def run_through(self, node_name: str) -> None:
        """Execute up to and including ``node_name``: its outputs are then in the frontier."""
        self._run_to(self.position[node_name] + 1)

    def moments(self, name: str, axis: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and population variance of a frontier tensor over every batch."""
        acc = None
        for v in self.tensor(name):
            acc = add_channel_sums(acc, v, axis)
        if acc is None:
            raise ValueError(f"no calibration data reached '{name}'")
        return mean_var(acc)

    def _run_to(self, stop: int) -> None:
        if stop <= self.cur:
            return
        start = self.cur if self.pending_from is None else self.pending_from
        t = time.perf_counter()
        sess, inputs, outputs = self._session(start, stop)
        if sess is not None:
            feeds = self._feeds(inputs)
            feed = next(feeds)
            first = sess.run(outputs, feed)
            grows = sum(np.asarray(v).nbytes for v in first) > RECOMPUTE_GROWTH * sum(v.nbytes for v in feed.values())
            if (
                self.recompute
                and grows
                and self.pending < MAX_PENDING
                and self.n_batches > 1
                and all(self._cheap(n) for n in self.nodes[start:stop])
            ):
                self.pending_from, self.pending, self.virtual = start, self.pending + 1, set(outputs)
            else:
                per_batch = [first, *runs_in_order(sess, outputs, feeds, CONCURRENT_BATCHES)]
                self.pending_from, self.pending, self.virtual = None, 0, set()
                for k, name in enumerate(outputs):
                    self._store(name, [np.asarray(r[k]) for r in per_batch])
        else:  # nothing after ``stop`` reads what these nodes make
            self.pending_from, self.pending, self.virtual = None, 0, set()
        self.seconds_run += time.perf_counter() - t
        self.segments += 1
        self.cur = stop
        self._drop_dead()

    def _cheap(self, node: onnx.NodeProto) -> bool:
        """Whether ``node`` reads at most ``RECOMPUTE_MAX_READS`` values per output value: element-wise
        and shape ops, a convolution or product whose weight says so (a depthwise or narrow 1x1 one)."""
        if node.op_type in _DEAR:
            return False
        if node.op_type not in ("Conv", "MatMul", "Gemm"):
            return True
        dims = self.weight_dims.get(node.input[1]) if len(node.input) > 1 else None
        if dims is None or len(dims) < 2:  # a product of two activations (attention)
            return False
        if node.op_type == "Conv":
            reads = int(np.prod(dims[1:]))
        elif node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
            reads = dims[-1]
        else:
            reads = dims[-2]
        return reads <= RECOMPUTE_MAX_READS

    def _session(self, start: int, stop: int, want: list[str] | None = None):
        """(session, inputs, outputs) running nodes ``start:stop`` from the kept frontier: outputs
        ``want``, or every tensor they make that a node from ``stop`` on reads ((None, ...) if none)."""
        seg = self.nodes[start:stop]
        produced = {o for n in seg for o in n.output if o}
        inits = {t.name for t in self.model.graph.initializer}
        reads = {i for n in seg for i in list(n.input) + sorted(implicit_reads(n)) if i}
        inputs = sorted(r for r in reads if r not in produced and r not in inits)
        outputs = want or sorted(o for o in produced if self.last_use.get(o, -1) >= stop)
        if not outputs:
            return None, inputs, outputs
        segment = self._segment(seg, inputs, outputs, reads & inits)
        sess = make_session(
            segment,
            optimize=intermediate_optimization(),
            shared_arena=True,
            threads=threads_per_run(CONCURRENT_BATCHES),
        )
        return sess, inputs, outputs

    def _feeds(self, inputs: list[str]):
        """One feed dict per batch (empty for a segment of constants alone: it still runs once a batch)."""
        if not inputs:
            return ({} for _ in range(self.n_batches))
        values = zip(*(self.tensor(i) for i in inputs))
        return ({i: np.asarray(v) for i, v in zip(inputs, vals)} for vals in values)

    def _segment(self, seg, inputs, outputs, init_names) -> onnx.ModelProto:
        g = self.model.graph
        graph = helper.make_graph(
            seg,
            "segment",
            [helper.make_tensor_value_info(i, self.types.get(i, onnx.TensorProto.FLOAT), None) for i in inputs],
            [helper.make_tensor_value_info(o, self.types.get(o, onnx.TensorProto.FLOAT), None) for o in outputs],
            [t for t in g.initializer if t.name in init_names],
        )
        m = helper.make_model(graph, opset_imports=self.model.opset_import, ir_version=self.model.ir_version)
        m.functions.extend(self.model.functions)
        return m

    def close(self) -> None:
        self.frontier.clear()
        self.virtual.clear()
        release_shared_arena()  # the segments' working buffers
        if self.spill_dir:
            shutil.rmtree(self.spill_dir, ignore_errors=True)
            self.spill_dir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Recomputed:
    """A pending segment's output, recomputed batch by batch from the kept inputs whenever it is read
    (with the weights as they are then: an edit upstream shows, as it would in a kept tensor after
    ``update``)."""

    def __init__(self, prop: Propagation, name: str):
        self.prop, self.name = prop, name

    def __len__(self) -> int:
        return self.prop.n_batches

    def __iter__(self):
        prop = self.prop
        assert prop.pending_from is not None
        t = time.perf_counter()
        sess, inputs, outputs = prop._session(prop.pending_from, prop.cur, [self.name])
        for r in runs_in_order(sess, outputs, prop._feeds(inputs), CONCURRENT_BATCHES):
            prop.seconds_run += time.perf_counter() - t
            yield np.asarray(r[0])
            t = time.perf_counter()
        prop.seconds_run += time.perf_counter() - t
