"""os-sample: optimal sampling from a mixture of two causal language models.

The public API is imported lazily, so `os-sample --help` does not pay for torch and transformers.
"""

from __future__ import annotations

__version__ = "0.1.0"

_PUBLIC = {
    "OptimalSamplingModel": "os_cli.api.model",
    "SamplingOutput": "os_cli.api.model",
    "SamplerConfig": "os_cli.mix.sampler",
    "solve_alpha": "os_cli.mix.alpha",
    "ALPHA_METHODS": "os_cli.mix.alpha",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'os_cli' has no attribute {name!r}")
