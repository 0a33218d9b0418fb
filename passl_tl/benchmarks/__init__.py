"""Benchmarks behind ``tools/benchmark.py``: the data pipeline, the model's training step and eval forward."""
