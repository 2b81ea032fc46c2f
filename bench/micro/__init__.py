"""Microbenchmarks: one part of ours against a baseline, alternating in one process
(bench.harness)."""
