"""What a run or a benchmark ran on: package versions (the manifest's `versions`) and the machine
(`bench`'s report), and the CPU settings that depend on it: `set_cpu_threads` (the --threads of generate and
bench) and `busy_note` (a loaded machine). Defined once here; no printing. torch is imported only by
`machine_info` and `set_cpu_threads`.
"""

from __future__ import annotations

import os
import platform

# (distribution name, key in `versions()`)
PACKAGES = (
    ("os-sample", "os_sample"),
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("datasets", "datasets"),
    ("accelerate", "accelerate"),
)


def versions() -> dict[str, str | None]:
    """Python and the installed versions of os-sample and its main dependencies (None if absent)."""
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist, key in PACKAGES:
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    if out["os_sample"] is None:
        from os_cli import __version__

        out["os_sample"] = __version__
    return out


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(model=None) -> dict:
    """{"machine", "device", "dtype", "versions"} of this process and `model`'s devices (CPU without one)."""
    import torch

    from os_cli.memory import model_devices

    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    devices = model_devices(model) if model is not None else [torch.device("cpu")]
    cuda = [d for d in devices if d.type == "cuda"]
    if cuda:
        props = torch.cuda.get_device_properties(cuda[0].index or 0)
        device = {
            "type": "cuda",
            "name": props.name,
            "count": len(cuda),
            "devices": [str(d) for d in cuda],
            "total_memory": props.total_memory,
        }
    else:
        mem_kb = None
        try:
            with open("/proc/meminfo") as fh:
                mem_kb = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
        except (OSError, StopIteration, ValueError):
            pass
        device = {
            "type": "cpu",
            "name": cpu_name(),
            "count": 1,
            "devices": ["cpu"],
            "total_memory": mem_kb * 1024 if mem_kb else None,
        }
    return {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "cpu_usable": usable,
            "torch_threads": torch.get_num_threads(),
        },
        "device": device,
        "dtype": str(getattr(model, "dtype", "")).replace("torch.", "") or None,
        "versions": {**versions(), "cuda": torch.version.cuda},
    }


def set_cpu_threads(n: int) -> None:
    """torch's CPU threads for this process: n intra-op threads (torch.set_num_threads) and n inter-op
    threads unless inter-op work has started already (torch takes that setting once, before)."""
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:
        pass  # inter-op threads already started: the intra-op setting is the one CPU forwards use


def busy_note() -> str | None:
    """Why timings here are slow and noisy, when the 1-minute load average exceeds the machine's cores."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        return None
    cores = os.cpu_count() or 1
    if load <= cores:
        return None
    return (
        f"this machine is busy (1-minute load average {load:.1f} on {cores} cores): other processes compete "
        f"for the CPU, so these timings are slower and noisier than on an idle machine"
    )
