"""Benchmarks of the pipeline, each run as ``python -m bench.<name>`` (``make bench`` runs
``bench.pipeline`` and ``bench.ingest_auth``); results under bench/results/, figures in
docs/performance.md."""
