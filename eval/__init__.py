"""Benchmarks and evaluation (installed as `stc.eval`)."""
