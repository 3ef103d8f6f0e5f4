"""Compatibility alias: code written against the usage guide's `optimal_sampling_hf` runs unchanged."""

from os_cli import ALPHA_METHODS, OptimalSamplingModel, SamplerConfig, SamplingOutput, __version__, solve_alpha

__all__ = ["OptimalSamplingModel", "SamplingOutput", "SamplerConfig", "solve_alpha", "ALPHA_METHODS", "__version__"]
