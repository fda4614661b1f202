"""Benchmarks of stacktools against its peers; run each as ``python -m benchmarks.NAME``."""
