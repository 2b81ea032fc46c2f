"""The learner side: draw trajectories that are fresh enough, at the rate the limiter allows.

A draw is one Lua script per shard: it checks the limiter, picks records (uniform, newest
window, or by priority ** alpha) among those with version >= min_version, bumps their
times_sampled and returns payload and metadata together, so a record is never half read. A
payload that fails to decode (checksum, truncation, metadata that disagrees) is logged with its
Redis key, counted, removed, and replaced by another draw.
"""

from __future__ import annotations

import logging
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from critic_unlearn.codec import CodecError, decode_trajectory
from critic_unlearn.config import ReplayConfig
from critic_unlearn.replay.allocator import keep_large_buffers
from critic_unlearn.replay.errors import ReplayTimeout
from critic_unlearn.replay.metrics import Counters
from critic_unlearn.replay.rate_limiter import RateLimiter, Waiter
from critic_unlearn.replay.shards import open_limiter, open_shards
from critic_unlearn.replay.store import RecordMeta, SampleResult, StaleRelease
from critic_unlearn.types import Trajectory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampledRecord:
    """A drawn record. Its trajectory's tensors view the bytes Redis sent (no copy): read them
    or copy them (the learner's batch stacks them), but do not write to them in place."""

    trajectory: Trajectory
    meta: RecordMeta  # shard, slot, id, version, reward, role, actor, times_sampled, priority


class ReplaySampler:
    """Samples a run's buffer for the learner; also owns priorities, size and clear()."""

    def __init__(self, cfg: ReplayConfig, *, namespace: str | None = None,
                 seed: int | None = None) -> None:
        self.cfg = cfg
        # which records a draw picks: seeded, so a run is reproducible where calls are ordered
        self.rng = random.Random(seed)
        self.shards = open_shards(cfg, namespace)
        self.rate_limiter: RateLimiter = open_limiter(cfg, self.shards)
        self.counters = Counters()
        if cfg.keep_buffers:
            keep_large_buffers()

    def rng_state(self) -> torch.Tensor:
        """The draws' random state as an int64 tensor (for checkpoints; no pickle)."""
        version, words, gauss = self.rng.getstate()
        tail = [0, 0] if gauss is None else [1, struct.unpack("<q", struct.pack("<d", gauss))[0]]
        return torch.tensor([version, *words, *tail], dtype=torch.int64)

    def set_rng_state(self, state: torch.Tensor) -> None:
        """Continue the draws from `rng_state()`'s tensor."""
        values = [int(v) for v in state.tolist()]
        gauss = None if values[-2] == 0 else struct.unpack("<d", struct.pack("<q", values[-1]))[0]
        self.rng.setstate((values[0], tuple(values[1:-2]), gauss))

    def min_version_for(self, current_version: int) -> int:
        """Oldest version the learner at `current_version` may train on (max_staleness)."""
        return max(0, current_version - self.cfg.max_staleness)

    def sample(self, n: int, *, min_version: int,
               timeout_s: float | None = None) -> list[SampledRecord]:
        """`n` records (drawn with replacement) of version >= min_version, or ReplayTimeout."""
        if n < 1:
            raise ValueError(f"n = {n} records requested; ask for at least 1")
        out: list[SampledRecord] = []
        waiter = Waiter(self.cfg.timeout_s if timeout_s is None else timeout_s)
        try:
            while len(out) < n:
                res = self._draw(n - len(out), min_version)
                if res.status == "ok":
                    out += self._decode(res)
                    continue
                self.counters.stale_waits += res.status == "stale"
                if waiter.expired():
                    self._give_back(out)
                    raise ReplayTimeout(self._timeout_message(res, n, len(out), min_version,
                                                              waiter.timeout_s))
                waiter.pause()
        finally:
            self.counters.blocked_s += waiter.blocked_s
        return out

    def _give_back(self, drawn: list[SampledRecord]) -> None:
        """A batch that timed out half drawn is dropped: its draws go back to the limiter, or
        every wait would spend samples the learner never trained on."""
        if drawn:
            self.shards[0].limit("release", len(drawn), 0, self.rate_limiter.params.as_args())
            self.counters.samples -= len(drawn)

    def _draw(self, n: int, min_version: int) -> SampleResult:
        kw = dict(min_version=min_version, mode=self.cfg.sampling,
                  recent_window=self.cfg.recent_window,
                  priority_exponent=self.cfg.priority_exponent)
        limits = self.rate_limiter.params.as_args()
        if len(self.shards) == 1:
            return self.shards[0].sample(n, limiter=limits, rng=self.rng, **kw)
        sizes = [s.size() for s in self.shards]
        primary = self.shards[0]
        granted = primary.limit("sample", n, sum(sizes), limits)
        if granted == 0:
            return SampleResult("blocked", [], sum(sizes))
        # split the granted draws over shards in proportion to their size
        picks = self.rng.choices(range(len(sizes)), weights=sizes, k=granted)
        records, newest = [], -1
        for i, shard in enumerate(self.shards):
            k = picks.count(i)
            if k:
                res = shard.sample(k, limiter=None, rng=self.rng, **kw)
                records += res.records
                newest = max(newest, res.newest_version)
        if len(records) < granted:
            primary.limit("release", granted - len(records), 0, limits)
        if not records:
            return SampleResult("stale", [], sum(sizes), newest)
        return SampleResult("ok", records)

    def _decode(self, res: SampleResult) -> list[SampledRecord]:
        out = []
        bad: set[tuple[int, int]] = set()  # a batch may draw the same corrupt record twice
        for meta, payload in res.records:
            shard = self.shards[meta.shard]
            if (meta.shard, meta.id) in bad:
                continue
            try:
                traj = decode_trajectory(payload, copy=False)  # tensors view the reply
                if (traj.version, traj.actor_id, traj.role) != (meta.version, meta.actor,
                                                                 meta.role):
                    raise CodecError(
                        f"payload says version {traj.version}, actor {traj.actor_id}, role "
                        f"{traj.role}, metadata says {meta.version}, {meta.actor}, {meta.role}"
                    )
            except CodecError as e:
                bad.add((meta.shard, meta.id))
                self.counters.corrupt_skipped += 1
                log.warning("replay: skipping corrupt record %s (id %d): %s; removing it",
                            shard.keys.slot(meta.slot), meta.id, e)
                shard.drop(meta.slot, meta.id)
                continue
            self.counters.samples += 1
            self.counters.bytes_out += len(payload)
            out.append(SampledRecord(traj, meta))
        return out

    def _timeout_message(self, res: SampleResult, n: int, got: int, min_version: int,
                         timeout_s: float) -> str:
        head = f"replay sample of {n} timed out after {timeout_s:.1f} s with {got} drawn: "
        if res.status == "stale":
            return head + (
                f"no record has version >= {min_version} (newest is {res.newest_version}, "
                f"{res.size} stored); actors are stopped or still on old weights. Check the "
                "actors, or raise replay.max_staleness"
            )
        c = self.rate_limiter.counts()
        return head + (
            f"the rate limiter holds the learner ({res.size} stored, min_size_to_sample "
            f"{self.cfg.min_size_to_sample}, inserts {c['inserts']}, samples {c['samples']}, "
            f"samples_per_insert {self.cfg.samples_per_insert}); writers are not keeping up or "
            "have stopped. Check the actors, raise timeout_s or lower samples_per_insert"
        )

    def release_if_all_stale(self, min_version: int, batch: int = 1) -> StaleRelease | None:
        """Break the one deadlock the limiter and the staleness bound can make together.

        The limiter counts every stored record as owed samples, but records older than
        `min_version` are never drawn. When none can be drawn, the limiter would grant samples
        and it refuses the actors' next batch (`batch` records: the rule of
        `ReplayWriter.has_room`, which actors wait on), the learner waits for fresh records and
        the actors wait for room, forever. Then the stored records are counted as consumed (the
        limiter goes to its bottom, where a batch fits) so actors can insert fresh ones; one Lua
        script decides and writes. None when the limiter is not stuck that way. With several
        shards the other shards' counts are read first, so a record arriving there meanwhile may
        be counted as consumed too.
        """
        if batch < 1:
            raise ValueError(f"batch = {batch} records; pass the actors' batch size, at least 1")
        kw = dict(min_version=min_version, mode=self.cfg.sampling,
                  recent_window=self.cfg.recent_window)
        other_size = other_drawable = 0
        for shard in self.shards[1:]:
            size, drawable = shard.census(**kw)
            other_size += size
            other_drawable += drawable
        return self.shards[0].release_stale(
            **kw, other_size=other_size, other_drawable=other_drawable,
            limiter=self.rate_limiter.params.as_args(), batch=batch,
        )

    def update_priorities(self, records: Sequence[SampledRecord | RecordMeta],
                          priorities: Sequence[float]) -> int:
        """Set new priorities (e.g. |advantage|); records overwritten since are skipped."""
        if len(records) != len(priorities):
            raise ValueError(
                f"{len(records)} records but {len(priorities)} priorities; pass one per record"
            )
        by_shard: dict[int, list[tuple[int, int, float]]] = {}
        for rec, p in zip(records, priorities, strict=True):
            m = rec.meta if isinstance(rec, SampledRecord) else rec
            by_shard.setdefault(m.shard, []).append((m.slot, m.id, float(p)))
        return sum(self.shards[s].update_priorities(items) for s, items in by_shard.items())

    def size(self) -> int:
        return sum(s.size() for s in self.shards)

    def clear(self) -> int:
        """Delete this namespace's keys on every shard (other runs are untouched)."""
        return sum(s.clear() for s in self.shards)

    def stats(self) -> dict[str, float]:
        """Client counters plus server totals (inserted = present + evicted + corrupt)."""
        out = self.counters.as_dict()
        totals: dict[str, int] = {}
        for s in self.shards:
            for k, v in s.counters().items():
                totals[k] = totals.get(k, 0) + v
        out.update({f"replay/server_{k}": v for k, v in totals.items()})
        out.update({f"replay/limiter_{k}": v for k, v in self.rate_limiter.counts().items()})
        return out

    def close(self) -> None:
        for s in self.shards:
            s.conn.close()

    def __enter__(self) -> ReplaySampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
