"""Fault injection for tests of `generate` (environment variables, not a user interface).

Tests that kill a `python -m os_cli generate` subprocess cannot monkeypatch it, so the run loop
(os_cli/run.py) calls these three functions at fixed points; each does nothing unless its variable
is set. No other product module reads these variables.

- `OS_SAMPLE_INJECT_OOM=4[,1...]`: every forward of theta or the teacher on a batch of one of these
  row counts raises `torch.OutOfMemoryError` (`install_model_hooks`, after the models load), so the
  engine's OOM back-off runs without a GPU: the in-flight limit halves and the rows restart.
- `OS_SAMPLE_INJECT_DELAY=SECONDS`: sleeps after each write of records (`after_write`), so a test can
  kill a run after a known number of records.
- `OS_SAMPLE_INJECT_BUSY=PATH`: creates PATH, then blocks in a native call that signals do not
  interrupt, before the first row is sampled (`before_sampling`): stands in for a long prefill or
  CUDA sync, to test that a stop signal still ends the run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

INJECT_OOM = "OS_SAMPLE_INJECT_OOM"
INJECT_DELAY = "OS_SAMPLE_INJECT_DELAY"
INJECT_BUSY = "OS_SAMPLE_INJECT_BUSY"


def oom_sizes() -> set[int]:
    return {int(part) for part in os.environ.get(INJECT_OOM, "").replace(" ", "").split(",") if part.isdigit()}


def install_model_hooks(model) -> None:
    """Forward pre-hooks on the API model's networks that raise OOM at the sizes in OS_SAMPLE_INJECT_OOM."""
    sizes = oom_sizes()
    if not sizes:
        return
    import torch

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[0] in sizes:
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected by {INJECT_OOM} at {ids.shape[0]} rows)")

    for network in {id(m): m for m in (model.model_theta, model.model_t)}.values():
        network.register_forward_pre_hook(hook, with_kwargs=True)


def before_sampling() -> None:
    path = os.environ.get(INJECT_BUSY, "").strip()
    if path and not os.path.exists(path):
        import ctypes

        Path(path).write_text(str(os.getpid()))
        libc, mutex = ctypes.CDLL(None), ctypes.create_string_buffer(64)  # zeroed: an unlocked default mutex
        libc.pthread_mutex_lock(mutex)
        libc.pthread_mutex_lock(mutex)  # native, GIL released, never returns, not interrupted by signals


def after_write() -> None:
    delay = os.environ.get(INJECT_DELAY, "").strip()
    if delay:
        time.sleep(float(delay))
