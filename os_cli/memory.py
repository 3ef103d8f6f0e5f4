"""Memory readings: the devices a model lives on, their total memory, the process's RSS, and the
peak over a block (`PeakMemory`). No printing; `bench` and the dashboard read memory through here.

Peak memory on CUDA is `torch.cuda.max_memory_allocated` (and `max_memory_reserved`) per device,
reset on entry. On CPU it is the process's peak resident set size over the block: Linux VmHWM after
resetting it through /proc/self/clear_refs; where that is refused, the highest VmRSS sampled every
few ms; elsewhere ru_maxrss, which never goes down (the process's high-water mark so far).
"""

from __future__ import annotations

import platform
import threading
from typing import Sequence

import torch


def model_devices(model) -> list[torch.device]:
    """The devices the model's parameters live on (both models), CUDA first."""
    devices = set()
    for m in {id(x): x for x in (getattr(model, "model_theta", None), getattr(model, "model_t", None)) if x}.values():
        for p in m.parameters():
            devices.add(p.device)
    if not devices:
        devices.add(torch.device(getattr(model, "device", "cpu")))
    return sorted(devices, key=lambda d: (d.type != "cuda", d.index or 0))


def device_memory(model) -> dict[str, int] | None:
    """Total memory per CUDA device the model uses, or None on CPU."""
    cuda = [d for d in model_devices(model) if d.type == "cuda"]
    if not cuda:
        return None
    return {str(d): torch.cuda.get_device_properties(d.index or 0).total_memory for d in cuda}


def proc_status_kb(key: str) -> int | None:
    """A kB field of /proc/self/status (VmRSS, VmHWM), or None where there is none (not Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def max_rss_kb() -> int:
    """ru_maxrss in kB: the process's high-water mark so far (bytes on macOS, converted)."""
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb // 1024 if platform.system() == "Darwin" else kb


def rss_bytes() -> int:
    """The process's resident set size now (VmRSS); where that is unreadable, its peak; 0 if neither."""
    kb = proc_status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    try:
        return max_rss_kb() * 1024
    except Exception:  # noqa: BLE001 - a memory read must never break a run
        return 0


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory over a block: CUDA allocator peaks per device, else the process's peak RSS."""

    def __init__(self, devices: Sequence[torch.device]):
        self.cuda = [d for d in devices if d.type == "cuda"]
        self.metric: str | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._sampled_kb = 0

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            for d in self.cuda:
                torch.cuda.synchronize(d)
                torch.cuda.reset_peak_memory_stats(d)
            self.metric = "cuda_max_memory_allocated"
        elif proc_status_kb("VmHWM") is not None and _reset_rss_peak():
            self.metric = "cpu_peak_rss"
        elif proc_status_kb("VmRSS") is not None:
            self.metric = "cpu_peak_rss_sampled"
            self._sampled_kb = proc_status_kb("VmRSS") or 0
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:
            self.metric = "cpu_ru_maxrss_process"
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._sampled_kb = max(self._sampled_kb, proc_status_kb("VmRSS") or 0)

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._sampled_kb = max(self._sampled_kb, proc_status_kb("VmRSS") or 0)

    def read(self) -> tuple[int | None, int | None, dict[str, int]]:
        """(peak bytes over devices, CUDA reserved peak bytes or None, per-device peaks)."""
        if self.cuda:
            alloc = {str(d): int(torch.cuda.max_memory_allocated(d)) for d in self.cuda}
            reserved = max(int(torch.cuda.max_memory_reserved(d)) for d in self.cuda)
            return max(alloc.values()), reserved, alloc
        if self.metric == "cpu_peak_rss":
            kb = proc_status_kb("VmHWM") or 0
        elif self.metric == "cpu_peak_rss_sampled":
            kb = self._sampled_kb
        else:
            kb = max_rss_kb()
        return kb * 1024, None, {"cpu": kb * 1024}


def sync(devices: Sequence[torch.device]) -> None:
    """Wait for every CUDA device in `devices` (so a timer measures finished work)."""
    for d in devices:
        if d.type == "cuda":
            torch.cuda.synchronize(d)
