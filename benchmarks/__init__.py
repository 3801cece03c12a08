"""Benchmarks (`make bench`): timings against hand-written loops and peer libraries."""
