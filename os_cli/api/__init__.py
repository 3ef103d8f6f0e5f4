"""The Python API of the usage guide: OptimalSamplingModel and its results."""
