"""Faust agents of the pipeline."""
