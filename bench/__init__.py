"""Benchmarks of the pipeline, run by ``make bench`` against the local stack."""
