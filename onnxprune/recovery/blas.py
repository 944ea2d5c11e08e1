"""BLAS threads during recovery: one, except for the products and solves big enough to gain from more.

Why: recovery alternates short BLAS calls (a layer's normal equations, its solve) with onnxruntime runs
of the next segment on every core. OpenBLAS's idle workers busy-wait for about a tenth of a second after
each multi-threaded call (its THREAD_TIMEOUT, fixed when the library loads) before they sleep, so every
segment that followed a solve ran beside a spinning thread: resnet20 on 4,096 Fashion-MNIST images,
propagation of 16 segments 1.28 s with numpy's default threads against 0.79 s with one BLAS thread,
while its solves took the same time either way (0.24 s). A call is worth the spin only when it is large:
vgg11's 4,609-input Gemm solve took 1.97 s on two threads against 2.45 s on one. Setting the limit after a
call does not stop the spin (measured), so the small calls must run on one thread from the start.

threadpoolctl does the limiting: it finds whichever BLAS numpy loaded (OpenBLAS, MKL, BLIS) and sets its
thread count through that library's own call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

#: floating-point operations above which a call runs on all of BLAS's threads: about a tenth of a second
#: on one core, where splitting it saves more than the workers' spin afterwards costs
WIDE_FLOPS = 1e10

_state: dict = {}


def _controller():
    from threadpoolctl import ThreadpoolController

    if "ctl" not in _state:
        _state["ctl"] = ThreadpoolController()
    return _state["ctl"]


def _blas_threads(ctl) -> int:
    return max([lib.num_threads for lib in ctl.select(user_api="blas").lib_controllers] or [1])


@contextmanager
def one_thread() -> Iterator[None]:
    """BLAS on one thread inside, process-wide (the counts it had are restored on leaving)."""
    ctl = _controller()
    outer = _state.get("threads")
    _state["threads"] = _blas_threads(ctl) if outer is None else outer  # what ``threads_for`` gives back
    try:
        with ctl.limit(limits=1, user_api="blas"):
            yield
    finally:
        if outer is None:
            del _state["threads"]


@contextmanager
def threads_for(flops: float) -> Iterator[None]:
    """Inside ``one_thread``: BLAS on the threads it had before for a call of at least ``WIDE_FLOPS``
    (outside it, the count is left as it is)."""
    if flops < WIDE_FLOPS or "threads" not in _state:
        yield
        return
    with _controller().limit(limits=_state["threads"], user_api="blas"):
        yield
