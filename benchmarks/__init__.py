"""Benchmarks that measure the package on the machine at hand (``python -m benchmarks.<name>``)."""
