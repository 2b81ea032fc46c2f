"""One shard of one run's buffer: typed Python calls over the Lua scripts in `scripts.py`.

Writer and sampler talk to shards only through this class, so the key layout and the reply
formats of the scripts are known in exactly two files (`keys.py`, `scripts.py`) and here.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from redis.client import Pipeline
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from critic_unlearn.replay import scripts
from critic_unlearn.replay.client import Connection
from critic_unlearn.replay.keys import Keys

STAGE_TTL_MS = 600_000  # a staged payload outlives its MULTI only if the script never ran


@dataclass(frozen=True)
class RecordMeta:
    """What Redis stores beside a payload; comes back with every sampled record."""

    shard: int
    slot: int
    id: int  # insert sequence number on its shard (1, 2, ...); never reused
    uid: str  # writer-chosen unique id; a retried insert with the same uid is a no-op
    version: int  # policy version that produced the trajectory
    reward: float
    role: str  # 'forget' | 'retain'
    actor: int
    times_sampled: int  # including this draw
    priority: float
    probability: float  # chance of this draw (for importance weights)

    @property
    def key(self) -> str:
        """Human-readable record name used in logs: shard/slot#id."""
        return f"shard {self.shard} slot {self.slot} id {self.id}"


@dataclass(frozen=True)
class Insert:
    """One record to insert: its encoded payload and what Redis indexes it by."""

    payload: bytes
    uid: str  # writer-chosen unique id; a retried insert with the same uid is a no-op
    version: int
    reward: float
    role: str
    actor: int
    priority: float | None = None  # None: the highest priority seen so far


@dataclass(frozen=True)
class InsertResult:
    status: str  # 'ok' | 'dup' | 'blocked'
    id: int
    slot: int
    evicted_id: int  # id of the record this insert overwrote, 0 if none


@dataclass(frozen=True)
class SampleResult:
    status: str  # 'ok' | 'blocked' (rate limiter) | 'stale' (no record new enough)
    records: list[tuple[RecordMeta, bytes]]
    size: int = 0
    newest_version: int = -1


@dataclass(frozen=True)
class StaleRelease:
    """What the deadlock breaker did: every stored record was too old to draw, so the limiter
    counted them as consumed (its samples counter moved to the band's bottom)."""

    size: int  # records stored (all shards)
    inserts: int
    samples_before: int
    samples_after: int


def _num(x: bytes | None) -> str:
    return x.decode() if x is not None else "nan"


class Shard:
    """The keys of one (namespace, shard) on one server, and the scripts that change them."""

    def __init__(self, conn: Connection, keys: Keys, capacity: int) -> None:
        self.conn = conn
        self.keys = keys
        self.capacity = capacity
        r = conn.redis
        self._insert = r.register_script(scripts.INSERT)
        self._sample = r.register_script(scripts.SAMPLE)
        self._drop = r.register_script(scripts.DROP)
        self._update = r.register_script(scripts.UPDATE_PRIORITIES)
        self._limit = r.register_script(scripts.LIMIT)
        self._room = r.register_script(scripts.ROOM)
        self._census = r.register_script(scripts.CENSUS)
        self._release = r.register_script(scripts.RELEASE_STALE)

    def insert_many(self, items: Sequence[Insert], *, limiter: tuple | None
                    ) -> list[InsertResult]:
        """Insert records in one round trip: MULTI { SET stage; EVALSHA INSERT } per record EXEC.

        Each INSERT decides on its own (duplicate uid, limiter), in order, so the limiter may
        take the first records and hold back the rest ('blocked'): the caller retries those.
        """
        rl = ("1", *limiter) if limiter else ("0", 0, 0, 0)

        def args(it: Insert) -> list:
            return [self.keys.prefix, self.capacity, len(it.payload), it.uid, it.version,
                    repr(float(it.reward)), it.role, it.actor,
                    "" if it.priority is None else repr(float(it.priority)), *rl]

        def build() -> Pipeline:
            pipe = self.conn.redis.pipeline(transaction=True)
            for it in items:
                pipe.set(self.keys.stage(it.uid), it.payload, px=STAGE_TTL_MS)
                pipe.evalsha(self._insert.sha, 1, self.keys.head, *args(it))
            return pipe

        def run() -> list:
            return self._exec_with_script(build, self._insert)[1::2]

        replies = self.conn.call(run, "an insert")
        return [InsertResult(status.decode(), int(rid), int(slot), int(evicted))
                for status, rid, slot, evicted in replies]

    def _exec_with_script(self, build: Callable[[], Pipeline], script: Script) -> list:
        """EXEC a transaction that calls `script`; after a server restart, load it and redo."""
        for attempt in range(2):
            res = build().execute(raise_on_error=False)
            errors = [r for r in res if isinstance(r, Exception)]
            if not errors:
                return res
            if attempt or not all(isinstance(e, NoScriptError) for e in errors):
                raise errors[0]
            self.conn.redis.script_load(script.script)
        raise AssertionError("unreachable")

    def sample(self, n: int, *, min_version: int, mode: str, recent_window: int,
               priority_exponent: float, limiter: tuple | None,
               rng: random.Random | None = None) -> SampleResult:
        """`rng` seeds the script's draws: the sampler passes its own seeded one, so a run
        whose calls come in a fixed order (the local runtime) draws the same records each time."""
        rl = ("1", *limiter) if limiter else ("0", 0, 0, 0)
        args = [self.keys.prefix, self.capacity, n, min_version, mode, recent_window,
                priority_exponent, (rng or random).getrandbits(31), *rl]
        reply = self.conn.call(lambda: self._sample(keys=[self.keys.head], args=args), "a sample")
        status = reply[0].decode()
        if status != "ok":
            return SampleResult(status, [], int(reply[1]), int(float(reply[2])))
        width = scripts.RECORD_FIELDS
        draws = [reply[k : k + width] for k in range(2, len(reply), width)]

        def read() -> list:
            # id, payload, id again: ids are never reused and an overwrite changes payload and
            # id in one script, so equal ids around the GET prove the payload is that record's.
            # (Not MULTI: Redis refuses to queue any command in MULTI once it is over maxmemory.)
            pipe = self.conn.redis.pipeline(transaction=False)
            for d in draws:
                mk = self.keys.meta(int(d[0]))
                pipe.hget(mk, "id")
                pipe.get(self.keys.slot(int(d[0])))
                pipe.hget(mk, "id")
            return pipe.execute()

        got = self.conn.call(read, "reading sampled payloads") if draws else []
        out = []
        for k, d in enumerate(draws):
            before, payload, after = got[3 * k : 3 * k + 3]
            if not (before == after == d[1]) or payload is None:
                continue  # overwritten between pick and read: the caller draws again
            s, rid, uid, ver, rew, role, actor, times, prio, prob = d
            meta = RecordMeta(
                shard=self.keys.shard, slot=int(s), id=int(rid), uid=uid.decode(),
                version=int(ver), reward=float(_num(rew)), role=role.decode(),
                actor=int(actor), times_sampled=int(times), priority=float(_num(prio)),
                probability=float(prob),
            )
            out.append((meta, payload))
        return SampleResult("ok", out)

    def drop(self, slot: int, rid: int) -> bool:
        """Remove a (corrupt) record if `slot` still holds record `rid`."""
        done = self.conn.call(
            lambda: self._drop(keys=[self.keys.head], args=[self.keys.prefix, slot, rid]),
            "dropping a corrupt record",
        )
        return bool(done)

    def update_priorities(self, items: list[tuple[int, int, float]]) -> int:
        for _, _, p in items:
            if not (math.isfinite(p) and p >= 0):
                raise ValueError(f"priority {p!r} is not allowed: use a finite number >= 0")
        args: list = [self.keys.prefix]
        for slot, rid, p in items:
            args += [slot, rid, repr(float(p))]
        return int(self.conn.call(
            lambda: self._update(keys=[self.keys.head], args=args), "a priority update"
        ))

    def limit(self, kind: str, n: int, total_size: int, limiter: tuple) -> int:
        """Limiter decision on this (primary) shard for data that lives on other shards."""
        return int(self.conn.call(
            lambda: self._limit(keys=[self.keys.rl], args=[kind, n, total_size, *limiter]),
            "a rate-limiter update",
        ))

    def has_room(self, n: int, other_size: int, limiter: tuple) -> bool:
        """Whether the limiter (on this primary shard) takes a batch of `n` now; `other_size`
        records live on the other shards."""
        return bool(self.conn.call(
            lambda: self._room(keys=[self.keys.head],
                               args=[self.keys.prefix, n, other_size, *limiter]),
            "a rate-limiter check",
        ))

    def census(self, *, min_version: int, mode: str, recent_window: int) -> tuple[int, int]:
        """(records stored, how many of them a draw at min_version could pick)."""
        size, fresh = self.conn.call(
            lambda: self._census(keys=[self.keys.head], args=[
                self.keys.prefix, self.capacity, min_version, mode, recent_window]),
            "a replay census",
        )
        return int(size), int(fresh)

    def release_stale(self, *, min_version: int, mode: str, recent_window: int, other_size: int,
                      other_drawable: int, limiter: tuple, batch: int) -> StaleRelease | None:
        """The deadlock breaker on this primary shard (scripts.RELEASE_STALE); None when the
        limiter is not stuck on stale records. `batch`: the actors' batch, whose room they wait
        for."""
        args = [self.keys.prefix, self.capacity, min_version, mode, recent_window, other_size,
                other_drawable, *limiter, batch]
        reply = self.conn.call(lambda: self._release(keys=[self.keys.head], args=args),
                               "a rate-limiter release")
        if not int(reply[0]):
            return None
        return StaleRelease(*(int(x) for x in reply[1:5]))

    def size(self) -> int:
        return int(self.conn.call(lambda: self.conn.redis.zcard(self.keys.ver)))

    def counters(self) -> dict[str, float]:
        """Server-side totals: inserted (head), present, evictions, corrupt, bytes_in."""
        r = self.conn.redis

        def read():
            pipe = r.pipeline(transaction=True)
            pipe.get(self.keys.head)
            pipe.zcard(self.keys.ver)
            pipe.hgetall(self.keys.stats)
            return pipe.execute()

        head, present, stats = self.conn.call(read)
        stats = {k.decode(): float(v) for k, v in stats.items()}
        return {
            "inserted": int(head or 0),
            "present": int(present),
            "evictions": int(stats.get("evictions", 0)),
            "corrupt": int(stats.get("corrupt", 0)),
            "bytes_in": int(stats.get("bytes_in", 0)),
        }

    def clear(self) -> int:
        """Delete every key of this shard of this namespace (and nothing else)."""
        r = self.conn.redis

        def run() -> int:
            n = 0
            batch: list[bytes] = []
            for key in r.scan_iter(match=self.keys.pattern, count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    n += r.unlink(*batch)
                    batch = []
            if batch:
                n += r.unlink(*batch)
            return n

        return self.conn.call(run, "clear")
