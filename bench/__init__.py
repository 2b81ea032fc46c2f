"""Benches, by kind: `bench.micro` (microbenchmarks: ours against a baseline in the same process),
`bench.stress` (long runs under faults and load) and `bench.experiments` (the paper's grids, their
committed results in bench/experiments/results/). Shared: `bench.harness` (the microbenchmarks'
timing loop and JSON line) and `bench.models` (random-weight models). Run one from the repository
root as a module: `python -m bench.micro.sampler_overhead`."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the repository root (configs/ and runs/ are here)
