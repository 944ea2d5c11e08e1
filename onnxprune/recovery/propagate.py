"""One propagation of the pruned model over the calibration set, stopping wherever recovery edits a node.

Sequential refitting (He et al. 2017) needs every layer to see the already recovered layers upstream.
Running the whole pruned model once per layer (or per wave) costs a chain of N layers N forward passes;
here the graph is cut in front of each node to edit, every *segment* between two cuts runs once over all
batches as a small extracted model, and only the *frontier* (tensors a later node still reads) is kept,
spilled to disk past a memory budget. The whole recovery then costs about one forward pass of the pruned
model, whatever the depth.
"""

from __future__ import annotations

import os
import shutil
import tempfile

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
    gives the per-batch values of a frontier tensor; ``update(name, fn)`` rewrites them in place (an
    affine correction of a layer's output that was just recalibrated)."""

    def __init__(self, model: onnx.ModelProto, batches, budget: int | None = None):
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

    def tensor(self, name: str) -> list[np.ndarray]:
        vals = self.frontier[name]
        return [np.load(v, mmap_mode="r") if isinstance(v, str) else v for v in vals]

    def update(self, name: str, fn) -> None:
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
        for name in [n for n in self.frontier if self.last_use.get(n, -1) < self.cur]:
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
        import time

        if stop <= self.cur:
            return
        seg = self.nodes[self.cur : stop]
        produced = {o for n in seg for o in n.output if o}
        inits = {t.name for t in self.model.graph.initializer}
        reads = {i for n in seg for i in list(n.input) + sorted(implicit_reads(n)) if i}
        inputs = sorted(r for r in reads if r not in produced and r not in inits)
        outputs = sorted(o for o in produced if self.last_use.get(o, -1) >= stop)
        t = time.perf_counter()
        if outputs:
            segment = self._segment(seg, inputs, outputs, reads & inits)
            sess = make_session(
                segment,
                optimize=intermediate_optimization(),
                shared_arena=True,
                threads=threads_per_run(CONCURRENT_BATCHES),
            )
            values = zip(*(self.tensor(i) for i in inputs))
            feeds = ({i: np.asarray(v) for i, v in zip(inputs, vals)} for vals in values)
            per_batch = list(runs_in_order(sess, outputs, feeds, CONCURRENT_BATCHES))
            for k, name in enumerate(outputs):
                self._store(name, [np.asarray(r[k]) for r in per_batch])
        self.seconds_run += time.perf_counter() - t
        self.segments += 1
        self.cur = stop
        self._drop_dead()

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
        release_shared_arena()  # the segments' working buffers
        if self.spill_dir:
            shutil.rmtree(self.spill_dir, ignore_errors=True)
            self.spill_dir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
