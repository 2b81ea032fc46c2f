"""The actor side: `ReplayWriter.write(traj)` stores one trajectory atomically, or waits.

An insert is one Lua script: payload, metadata, version and priority indexes and the limiter
counter change together or not at all. Each write carries a fresh uid, so when a reply is lost
with the connection and the call is retried, the server recognises the record and does not
store it twice.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from critic_unlearn.codec import encode_trajectory
from critic_unlearn.config import ReplayConfig
from critic_unlearn.replay.allocator import keep_large_buffers
from critic_unlearn.replay.errors import ReplayTimeout
from critic_unlearn.replay.metrics import Counters
from critic_unlearn.replay.rate_limiter import RateLimiter, Waiter
from critic_unlearn.replay.shards import open_limiter, open_shards
from critic_unlearn.replay.store import Insert, InsertResult
from critic_unlearn.types import Trajectory


@dataclass(frozen=True)
class RecordRef:
    """Where a record went: shard, ring slot, and its never-reused id on that shard."""

    shard: int
    slot: int
    id: int


class ReplayWriter:
    """Writes trajectories of one or more actors into a run's buffer."""

    def __init__(self, cfg: ReplayConfig, *, namespace: str | None = None) -> None:
        self.cfg = cfg
        self.shards = open_shards(cfg, namespace)
        self.limiter: RateLimiter = open_limiter(cfg, self.shards)
        self.counters = Counters()
        if cfg.keep_buffers:
            keep_large_buffers()

    def write(self, traj: Trajectory, *, priority: float | None = None,
              timeout_s: float | None = None) -> RecordRef:
        """Encode and store `traj`; block (up to timeout_s) while the rate limiter says wait.

        `priority` defaults to the highest priority seen so far, so new records get sampled.
        """
        return self.write_bytes(
            encode_trajectory(traj), version=traj.version, reward=traj.reward, role=traj.role,
            actor=traj.actor_id, priority=priority, timeout_s=timeout_s,
        )

    def write_many(self, trajs: Sequence[Trajectory],
                   timeout_s: float | None = None) -> list[RecordRef]:
        """Store a batch (an actor's) in one round trip where the limiter takes it whole.

        Records bound for the limiter's own shard (every record with one shard) go in one
        MULTI; any it holds back, and records bound for other shards, are written one by one
        as `write` does, waiting up to timeout_s each. A ReplayTimeout carries `written`: the
        indexes of the batch's records that went in before it.
        """
        items = [self._item(encode_trajectory(t), version=t.version, reward=t.reward,
                            role=t.role, actor=t.actor_id) for t in trajs]
        refs: list[RecordRef | None] = [None] * len(items)
        first = [i for i, it in enumerate(items) if self._shard_of(it.actor) == 0]
        if first:
            results = self.shards[0].insert_many([items[i] for i in first],
                                                 limiter=self.limiter.params.as_args())
            for i, res in zip(first, results, strict=True):
                if res.status != "blocked":
                    refs[i] = self._count(res, items[i], 0)
        for i, it in enumerate(items):
            if refs[i] is None:
                try:
                    refs[i] = self._insert(it, timeout_s)
                except ReplayTimeout as e:
                    e.written = tuple(k for k, r in enumerate(refs) if r is not None)
                    raise
        return [r for r in refs if r is not None]

    def write_bytes(self, payload: bytes, *, version: int, reward: float, role: str, actor: int,
                    priority: float | None = None, timeout_s: float | None = None) -> RecordRef:
        """Store an already encoded trajectory; the metadata must match what it encodes."""
        item = self._item(payload, version=version, reward=reward, role=role, actor=actor,
                          priority=priority)
        return self._insert(item, timeout_s)

    def _item(self, payload: bytes, *, version: int, reward: float, role: str, actor: int,
              priority: float | None = None) -> Insert:
        if role not in ("forget", "retain"):
            raise ValueError(f"role = {role!r} is not allowed: use 'forget' or 'retain'")
        # a fresh uid per record: a retried insert whose reply was lost is recognised
        return Insert(payload, f"{actor}-{uuid.uuid4().hex}", version, reward, role, actor,
                      priority)

    def _shard_of(self, actor: int) -> int:
        return actor % len(self.shards)

    def _insert(self, item: Insert, timeout_s: float | None) -> RecordRef:
        """Insert one record, waiting (up to timeout_s) while the rate limiter says wait."""
        shard_no = self._shard_of(item.actor)
        shard = self.shards[shard_no]
        limits = self.limiter.params.as_args()
        waiter = Waiter(self.cfg.timeout_s if timeout_s is None else timeout_s)
        while True:
            if shard_no == 0:
                res = shard.insert_many([item], limiter=limits)[0]
            elif self.shards[0].limit("insert", 1, self._total_size(), limits):
                res = shard.insert_many([item], limiter=None)[0]
            else:
                res = None
            if res is not None and res.status != "blocked":
                break
            if waiter.expired():
                self.counters.blocked_s += waiter.blocked_s
                c = self.limiter.counts()
                raise ReplayTimeout(
                    f"replay write timed out after {waiter.timeout_s:.1f} s: the rate limiter "
                    f"holds actor {item.actor} (inserts {c['inserts']}, samples {c['samples']}, "
                    f"samples_per_insert {self.cfg.samples_per_insert}, error_buffer "
                    f"{self.cfg.error_buffer}); the learner is not sampling. Check it is alive, "
                    "or raise replay.error_buffer / lower replay.samples_per_insert"
                )
            waiter.pause()
        self.counters.blocked_s += waiter.blocked_s
        return self._count(res, item, shard_no)

    def _count(self, res: InsertResult, item: Insert, shard_no: int) -> RecordRef:
        if res.status == "dup":
            self.counters.duplicates += 1
        else:
            self.counters.inserts += 1
            self.counters.bytes_in += len(item.payload)
            self.counters.evictions += res.evicted_id > 0
        return RecordRef(shard_no, res.slot, res.id)

    def has_room(self, n: int) -> bool:
        """Whether the rate limiter would take a batch of `n` now: the insert rule for
        min(n, 2 * error_buffer / samples_per_insert, at least 1) records, decided in Lua."""
        if n < 1:
            raise ValueError(f"n = {n} records to make room for; pass at least 1")
        others = sum(s.size() for s in self.shards[1:])
        return self.shards[0].has_room(n, others, self.limiter.params.as_args())

    def wait_for_room(self, n: int, wait_s: float,
                      on_poll: Callable[[], None] | None = None) -> bool:
        """Wait up to `wait_s` for room for a batch of `n` (see `has_room`); False if none came.

        An actor asks before it samples: sampling first and then waiting in `write` would hold
        trajectories while the learner moves on, so they could reach Redis older than
        replay.max_staleness allows. Room is not reserved: if another writer takes it first,
        `write` waits as usual. `on_poll` runs before every check (an actor applies weights that
        arrived meanwhile).
        """
        deadline = time.monotonic() + wait_s
        delay = 0.005
        while True:
            if on_poll is not None:
                on_poll()
            if self.has_room(n):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.05)

    def _total_size(self) -> int:
        return sum(s.size() for s in self.shards)

    def stats(self) -> dict[str, float]:
        return self.counters.as_dict()

    def close(self) -> None:
        for s in self.shards:
            s.conn.close()

    def __enter__(self) -> ReplayWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
