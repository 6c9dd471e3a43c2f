"""Benchmarks: our code against peers, timed in the same run (see benchmarks/README.md)."""
