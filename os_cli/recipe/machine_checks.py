"""Recipe values checked against this machine, before any model loads: model folders, attention,
devices, device maps and max_memory.

Each `*_problem` returns why a value cannot be used, or None. `hardware=False` checks the syntax only;
`hardware=True` also that CUDA is present and device indices are below `torch.cuda.device_count()`
(torch is imported only then). Nothing here loads weights or prints.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any, Mapping


def model_folder_problem(path: str | os.PathLike) -> str | None:
    path = Path(path)
    if path.is_dir() and not (path / "config.json").is_file():
        return (
            f"the folder {path} has no config.json, so it is not a model saved with save_pretrained "
            f"(point at the folder that holds config.json and the weights)"
        )
    return None


def attn_problem(requested: str | None, device: Any) -> str | None:
    if requested != "flash_attention_2":
        return None
    if importlib.util.find_spec("flash_attn") is None:
        return (
            "attn_implementation flash_attention_2 needs the flash-attn package, which is not installed here "
            "(pip install -e '.[flash]' on a CUDA machine), or use sdpa (auto picks it)"
        )
    if str(device) == "cpu" or str(getattr(device, "type", device)) == "cpu":
        return "attn_implementation flash_attention_2 runs on CUDA only, but the device is cpu; use sdpa"
    return None


DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


DEVICE_ALLOWED = "auto, cpu, cuda or cuda:N"


# from_pretrained's device_map strategies; a mapping {module name: device} is the other form.
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


# The sizes accelerate's convert_file_size_to_int reads as bytes (it reads a lowercase b as bits).
_MEMORY_SIZE = re.compile(r"^\d+(\.\d+)?\s*(KB|MB|GB|KiB|MiB|GiB)$")


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cuda_index_problem(index: int, what: str) -> str | None:
    count = _cuda_count()
    if count == 0:
        return f"{what} asks for CUDA, but torch sees no CUDA device here (use auto or cpu)"
    if index >= count:
        return f"{what} asks for CUDA device {index}, but torch sees {count} (cuda:0..cuda:{count - 1})"
    return None


def device_problem(value: Any, hardware: bool = True) -> str | None:
    if not isinstance(value, str) or not DEVICE_PATTERN.match(value):
        return f"device must be {DEVICE_ALLOWED}, got {value!r}"
    if hardware and value.startswith("cuda"):
        return cuda_index_problem(int(value[5:] or 0), f"device {value!r}")
    return None


def _map_value_problem(value: Any, hardware: bool) -> str | None:
    """One device of a device_map mapping: a GPU index, cpu, cuda or cuda:N."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return cuda_index_problem(value, f"device {value}") if hardware else None
    if isinstance(value, str) and value != "auto" and DEVICE_PATTERN.match(value):
        return device_problem(value, hardware)
    return f"a device_map device must be a GPU index (0, 1, ...), cpu, cuda or cuda:N, got {value!r}"


def device_map_problem(value: Any, hardware: bool = True) -> str | None:
    if isinstance(value, str):
        if value in DEVICE_MAP_STRATEGIES:
            return None
        return (
            f"device_map must be one of {', '.join(DEVICE_MAP_STRATEGIES)} or a mapping of module names "
            f'to devices (e.g. {{"": 0}}), got {value!r}'
        )
    if not isinstance(value, Mapping) or not value:
        return f"device_map must be a strategy name or a non-empty mapping of module names to devices, got {value!r}"
    for module, device in value.items():
        if not isinstance(module, str):
            return f'device_map keys are module names (strings; "" is the whole model), got {module!r}'
        problem = _map_value_problem(device, hardware)
        if problem:
            return f"device_map[{module!r}]: {problem}"
    return None


def max_memory_problem(value: Any, hardware: bool = True) -> str | None:
    if not isinstance(value, Mapping) or not value:
        return f"max_memory must be a mapping of devices (GPU index or cpu) to sizes (e.g. {{0: 20GiB, cpu: 64GiB}}), got {value!r}"
    for device, size in value.items():
        if device != "cpu" and not (isinstance(device, int) and not isinstance(device, bool) and device >= 0):
            return f"max_memory keys are GPU indices (0, 1, ...) or cpu, got {device!r}"
        if isinstance(device, int) and hardware:
            problem = cuda_index_problem(device, f"max_memory[{device}]")
            if problem:
                return problem
        good = (isinstance(size, int) and not isinstance(size, bool) and size > 0) or (
            isinstance(size, str) and _MEMORY_SIZE.match(size.strip())
        )
        if not good:
            return (
                f"max_memory[{device!r}] must be a size in KiB, MiB, GiB, KB, MB or GB (like 20GiB), "
                f"or a number of bytes, got {size!r}"
            )
    return None
