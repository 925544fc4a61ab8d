"""Faust tables of the pipeline (state that survives restarts and rebalances)."""
