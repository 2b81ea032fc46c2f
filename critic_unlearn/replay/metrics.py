"""Client-side replay counters, reported as `replay/...` metrics with rates since creation."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Counters:
    """What one writer or sampler did; the server-side totals come from `Shard.counters()`."""

    inserts: int = 0
    duplicates: int = 0  # retried inserts the server had already stored
    samples: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    evictions: int = 0  # records this writer's inserts overwrote
    corrupt_skipped: int = 0
    stale_waits: int = 0  # sample calls that found no record new enough
    blocked_s: float = 0.0  # time spent waiting on the rate limiter or for fresh records
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, float]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        out: dict[str, float] = {
            f"replay/{k}": v for k, v in vars(self).items() if k != "started"
        }
        out["replay/inserts_per_s"] = self.inserts / elapsed
        out["replay/samples_per_s"] = self.samples / elapsed
        out["replay/mb_in_per_s"] = self.bytes_in / elapsed / 1e6
        out["replay/mb_out_per_s"] = self.bytes_out / elapsed / 1e6
        return out
