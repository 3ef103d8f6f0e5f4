"""Benchmarks behind `os-sample bench`: batch-size sweeps, measured points, speculative draft costs."""
