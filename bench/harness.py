"""The timing harness every microbenchmark uses: warm-up, timed repeats, medians, the JSON line.

A microbenchmark names its sides (ours and the baseline it is compared with) as zero-argument
callables and hands them to `alternate`, which calls each once per warm-up round, then once per
repeat in turn, so every side sees the same load on a shared machine; on CUDA each call is
synchronised before and after, and its peak allocation is read. `print_runs` prints the medians
and every run; `emit` prints the bench's result as the last line of stdout (one JSON object: a bar
reads its keys).

    sides = {"baseline": theirs, "ours": ours}
    timings = alternate(sides, repeats=5, device=device)
    print_runs(timings)
    emit({"ratio": round(timings.median("ours") / timings.median("baseline"), 4)})
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


def sync(device: torch.device | str | None) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@dataclass(frozen=True)
class Call:
    """One timed call: its wall time, and on CUDA the allocator's peak during it (`peak_bytes`)
    and that peak above what was allocated when it started (`extra_bytes`); 0 on the CPU."""

    seconds: float
    peak_bytes: int = 0
    extra_bytes: int = 0


def timed_call(fn: Callable[[], object], device: torch.device | str | None = None) -> Call:
    """Call `fn` once between two device synchronisations and time it."""
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else 0
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    seconds = time.perf_counter() - t0
    if not cuda:
        return Call(seconds)
    peak = torch.cuda.max_memory_allocated()
    return Call(seconds, peak, peak - before)


@dataclass
class Timings:
    """Per side: the timed runs in seconds (`times`), the first warm-up call's time (`first`),
    and the largest `peak_bytes` / `extra_bytes` of its timed runs (0 on the CPU)."""

    times: dict[str, list[float]]
    first: dict[str, float] = field(default_factory=dict)
    peak_bytes: dict[str, int] = field(default_factory=dict)
    extra_bytes: dict[str, int] = field(default_factory=dict)

    def median(self, side: str) -> float:
        return statistics.median(self.times[side])

    def medians(self) -> dict[str, float]:
        return {side: self.median(side) for side in self.times}


def alternate(
    sides: Mapping[str, Callable[[], object]],
    repeats: int,
    *,
    warmup: int = 1,
    device: torch.device | str | None = None,
) -> Timings:
    """`warmup` untimed rounds, then `repeats` timed rounds; each round calls every side once, in
    the order of `sides`. Raises ValueError for a negative count or no sides."""
    if not sides:
        raise ValueError("alternate: no sides to time; pass at least one name -> callable")
    if repeats < 0 or warmup < 0:
        raise ValueError(f"alternate: repeats={repeats}, warmup={warmup}; both must be >= 0")
    out = Timings({name: [] for name in sides})
    for _ in range(warmup):
        for name, fn in sides.items():
            out.first.setdefault(name, timed_call(fn, device).seconds)
    for _ in range(repeats):
        for name, fn in sides.items():
            call = timed_call(fn, device)
            out.times[name].append(call.seconds)
            out.peak_bytes[name] = max(out.peak_bytes.get(name, 0), call.peak_bytes)
            out.extra_bytes[name] = max(out.extra_bytes.get(name, 0), call.extra_bytes)
    return out


def print_runs(timings: Timings, width: int = 10) -> None:
    """One line per side: its median and every timed run, in seconds."""
    for name, runs in timings.times.items():
        print(f"{name:>{width}}: median {statistics.median(runs):.3f} s  "
              f"runs {[round(x, 3) for x in runs]}")


def emit(result: Mapping[str, Any]) -> None:
    """Print the bench's result as its last line of stdout: one JSON object."""
    sys.stdout.flush()
    print(json.dumps(dict(result)), flush=True)
