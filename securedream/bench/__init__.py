"""Benchmarks: accuracy of CoDream against baselines, secure aggregation cost."""
