"""Samples-per-insert rate limiting with Reverb's semantics, counted in Redis.

With `spi` samples per insert, `min_size` records before any sampling and an error buffer `eb`,
diff = inserts * spi - samples must stay in [spi * min_size - eb, spi * min_size + eb]: actors
block when they run ahead of the learner, the learner blocks when it would re-read a stale buffer.
Below `min_size` records inserts are always allowed and samples never are. The counters live in
the primary shard's `rl` hash, and every rule over them is evaluated once, in Lua (scripts.py:
insert, sample, room for a batch, the stale release), so every writer and the sampler see one
limiter and no Python code re-derives it. They belong in the learner's checkpoint:
`state_dict()` on save, `load_state_dict()` on restore, or `reset()` to start counting afresh (a
reset limiter needs new inserts before it grants samples, so a restored learner does not overfit
the old buffer).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from critic_unlearn.replay.store import Shard


@dataclass(frozen=True)
class LimiterParams:
    samples_per_insert: float
    min_size_to_sample: int
    error_buffer: float

    def __post_init__(self) -> None:
        need = max(1.0, self.samples_per_insert)
        if self.error_buffer < need:
            raise ValueError(
                f"replay.error_buffer = {self.error_buffer} is too small for "
                f"samples_per_insert = {self.samples_per_insert}: it must be >= {need}, or "
                "writers and the sampler can block each other forever"
            )

    def as_args(self) -> tuple[float, int, float]:
        return (self.samples_per_insert, self.min_size_to_sample, self.error_buffer)


class RateLimiter:
    """Handle on the shared limiter counters; the decisions are made inside the Lua scripts."""

    def __init__(self, params: LimiterParams, primary: Shard) -> None:
        self.params = params
        self.primary = primary

    def counts(self) -> dict[str, int]:
        raw = self.primary.conn.call(
            lambda: self.primary.conn.redis.hmget(self.primary.keys.rl, "inserts", "samples")
        )
        return {"inserts": int(raw[0] or 0), "samples": int(raw[1] or 0)}

    def state_dict(self) -> dict[str, float]:
        return {**self.counts(), **vars(self.params)}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore the counters saved by `state_dict` (parameters come from the config)."""
        try:
            inserts, samples = int(state["inserts"]), int(state["samples"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"rate-limiter state {state!r} lacks integer 'inserts' and 'samples' ({e}); "
                "pass what RateLimiter.state_dict() returned"
            ) from None
        self._set(inserts, samples)

    def reset(self) -> None:
        self._set(0, 0)

    def _set(self, inserts: int, samples: int) -> None:
        key = self.primary.keys.rl
        self.primary.conn.call(
            lambda: self.primary.conn.redis.hset(key, mapping={"inserts": inserts,
                                                               "samples": samples})
        )


class Waiter:
    """Polls a blocked call with growing sleeps (1 ms .. 50 ms) until it succeeds or times out."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.start = time.monotonic()
        self.delay = 0.001
        self.blocked_s = 0.0

    def expired(self) -> bool:
        return time.monotonic() - self.start >= self.timeout_s

    def pause(self) -> None:
        left = self.timeout_s - (time.monotonic() - self.start)
        nap = max(0.0, min(self.delay, left))
        time.sleep(nap)
        self.blocked_s += nap
        self.delay = min(self.delay * 2, 0.05)
