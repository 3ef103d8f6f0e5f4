"""Where the refill loop's wall time goes, for benchmarks (`bench --lengths long-tail`, benchmarks/):
a `PhaseClock` given as `SchedulerStats.clock` splits a `decode_rows` call into

  decode        theta and teacher forwards of rows in flight (plain steps, speculative rounds, cost probes)
  mixing        the q* step (step_fn) outside admissions
  prefill/join  admissions: prefilling new rows, their first q* step, joining them to the running batch
  host          the rest: token bookkeeping, end checks, trimming caches, Python, and the consumer's own time
                between two results (a run writing records)

Forwards are timed by hooks on the two models and the q* step by a wrapper, synchronising CUDA devices
around each so GPU time lands in its own phase: timing costs a little, so only benchmarks attach a clock.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from typing import Iterator, Sequence

import torch

PHASES = ("decode", "mixing", "prefill/join", "host")


def timed(clock: PhaseClock | None, phase: str):
    """`clock.timed(phase)`, or nothing without a clock."""
    return nullcontext() if clock is None else clock.timed(phase)


@contextmanager
def attached(clock: PhaseClock | None, models) -> Iterator[None]:
    """The clock runs (and its hooks stay on `models`) for the block; nothing without a clock."""
    if clock is None:
        yield
        return
    clock.attach(models)
    try:
        yield
    finally:
        clock.detach()


class PhaseClock:
    def __init__(self, devices: Sequence[torch.device] = ()):
        self.devices = [torch.device(d) for d in devices]
        self.seconds = {name: 0.0 for name in PHASES}
        self.total = 0.0
        self._inside: str | None = None  # a phase being timed as a whole (admissions): its parts are not split
        self._hooks: list = []
        self._start = 0.0

    def _sync(self) -> None:
        for d in self.devices:
            if d.type == "cuda":
                torch.cuda.synchronize(d)

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Time the block as `phase` (nested blocks count only in the outermost)."""
        if self._inside is not None:
            yield
            return
        self._sync()
        self._inside, start = phase, time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[phase] += time.perf_counter() - start
            self._inside = None

    def wrap_step(self, step_fn):
        def timed_step(*args, **kwargs):
            with self.timed("mixing"):
                return step_fn(*args, **kwargs)

        return timed_step

    def attach(self, models) -> None:
        """Start the call's clock; time every forward of `models` as decode (outside admissions)."""
        for model in {id(m): m for m in models if m is not None}.values():
            self._hooks.append(model.register_forward_pre_hook(lambda *_: self._enter()))
            self._hooks.append(model.register_forward_hook(lambda *_: self._leave()))
        self._sync()
        self._start = time.perf_counter()

    def detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._sync()
        self.total += time.perf_counter() - self._start
        self.seconds["host"] = max(0.0, self.total - sum(v for k, v in self.seconds.items() if k != "host"))

    def _enter(self) -> None:
        self._forward = self.timed("decode")
        self._forward.__enter__()

    def _leave(self) -> None:
        self._forward.__exit__(None, None, None)

    def shares(self) -> dict[str, float]:
        """Each phase's fraction of the total (after `detach`)."""
        return {k: (v / self.total if self.total else 0.0) for k, v in self.seconds.items()}
