"""One actor's worker: pull weights if newer -> sample -> score -> write to the replay.

Both runtimes run it: the local one calls it in this process and pushes each version with
`receive`; the Ray one runs it as an actor (`runtime.actor_worker.RayActorWorker`, which adds the
object-store fetch of pushed versions). The model only changes under `model_lock`, which
`run_batch` holds while sampling: a version offered mid-batch waits as `pending` and is applied at
the next batch boundary, so every trajectory is sampled by exactly one version and carries it.
Besides pushes, weights are pulled from the durable Redis copy at start and every
`actors.weight_poll_s` when no push came. A failed fetch or a refused manifest leaves the current
weights in place; sampling never stops for it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import torch

from critic_unlearn.actors.actor import Actor, WeightsRefused
from critic_unlearn.adversarial.packets import unfold_pool
from critic_unlearn.config import RunConfig
from critic_unlearn.replay import ReplayTimeout, ReplayWriter, WeightStore
from critic_unlearn.training.reports import BatchReport, ua_proxy
from critic_unlearn.training.setup import build_actor
from critic_unlearn.types import Trajectory, WeightsPacket

log = logging.getLogger(__name__)
ActorFactory = Callable[[RunConfig, int], Actor]


def _default_factory(cfg: RunConfig, actor_id: int) -> Actor:
    return build_actor(cfg, actor_id)


class ActorWorker:
    """Holds one actor's pipeline, reward model, replay writer and weight store."""

    def __init__(
        self,
        cfg: RunConfig,
        actor_id: int,
        namespace: str,
        factory: ActorFactory | None = None,
    ) -> None:
        if cfg.runtime.num_threads:
            torch.set_num_threads(cfg.runtime.num_threads)
        self.cfg, self.actor_id = cfg, actor_id
        self.actor = (factory or _default_factory)(cfg, actor_id)
        self.writer = ReplayWriter(cfg.replay, namespace=namespace)
        self.store = WeightStore(cfg.replay, namespace)
        self.model_lock = threading.Lock()  # held while sampling or changing weights
        self.pending: WeightsPacket | None = None  # newest version received mid-batch
        self.pending_reset = False  # apply `pending` even if older (the learner was restored)
        self.last_weights = time.monotonic()  # last push received or Redis checked
        self.fetch_failures = 0

    def __repr__(self) -> str:  # Ray prefixes this actor's log lines with it
        return f"actor-{self.actor_id}"

    def _say(self, level: int, msg: str, *args: object) -> None:
        log.log(level, f"[actor {self.actor_id}] {msg}", *args)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, state: dict | None = None) -> dict:
        """Restore seeds/rng (a restart continues its predecessor's streams) and load the
        durable copy of the weights from Redis."""
        self.restore(state)
        with self.model_lock:
            self._pull_from_store()
        return self.started()

    def restore(self, state: dict | None) -> None:
        with self.model_lock:
            if state is not None:
                self.actor.next_seed = int(state["next_seed"])
                self.actor.rng.set_state(state["rng"])

    def started(self) -> dict:
        return {
            "pid": os.getpid(),
            "next_seed": self.actor.next_seed,  # where this incarnation's seed stream starts
            "rng": self.actor.rng.get_state(),
            **self._where(),
        }

    def _where(self) -> dict:
        return {"actor_id": self.actor_id, "version": self.actor.version}

    # -- weights ------------------------------------------------------------------------------
    def offer(self, packet: WeightsPacket | None, reset: bool = False) -> bool:
        """A pushed version (None: its fetch failed): apply it now if no batch is running, else
        at the next batch boundary; without one, try the Redis copy instead. Returns whether
        weights were applied now. `reset`: take it even if older than the current version (a
        restarted learner went back to its last checkpoint, and its versions go on from there).
        """
        if packet is not None and (reset or packet.version > self._newest_known()):
            self.pending, self.pending_reset = packet, reset
        if not self.model_lock.acquire(blocking=False):
            return False
        try:
            return self._apply_pending() if packet is not None else self._pull_from_store(reset)
        finally:
            self.model_lock.release()

    def receive(self, packet: WeightsPacket, reset: bool = False) -> bool:
        """In-process push (the local runtime): apply now; no batch runs concurrently there."""
        with self.model_lock:
            self.last_weights = time.monotonic()
            return self._apply(packet, "learner", reset)

    def _newest_known(self) -> int:
        p = self.pending
        return max(self.actor.version, p.version if p is not None else -1)

    def _apply_pending(self) -> bool:
        """Apply the pending version (caller holds model_lock)."""
        packet, self.pending = self.pending, None
        reset, self.pending_reset = self.pending_reset, False
        return packet is not None and self._apply(packet, "object store", reset)

    def _apply(self, packet: WeightsPacket, source: str, reset: bool = False) -> bool:
        if packet.version <= self.actor.version and not (reset and packet.version >= 0):
            return False
        try:
            self.actor.apply_weights(packet)
        except WeightsRefused as e:
            self._say(logging.ERROR, "%s (from the %s); keeping v%d", e, source, self.actor.version)
            return False
        return True

    def _pull_from_store(self, reset: bool = False) -> bool:
        """Load the durable copy if it is newer than anything known, or with `reset` if it is
        any other version (a restored learner's); the caller holds model_lock."""
        self.last_weights = time.monotonic()
        try:
            latest = self.store.latest_version()
            if latest is None:  # nothing published yet (a fresh run's first polls)
                return False
            if latest == self.actor.version if reset else latest <= self._newest_known():
                return False
            packet = self.store.get()
            packet = None if packet is None else unfold_pool(packet)
        except Exception as e:  # Redis gone past its deadline, corrupt blob: keep sampling
            self.fetch_failures += 1
            self._say(
                logging.WARNING,
                "weights fetch from Redis failed (%s: %s); keeping v%d",
                type(e).__name__,
                e,
                self.actor.version,
            )
            return False
        return packet is not None and self._apply(packet, "Redis copy", reset)

    def _refresh_weights(self) -> None:
        """At a batch boundary: the pending push, else the Redis copy if no push came lately."""
        with self.model_lock:
            if self.pending is not None:
                self._apply_pending()
            elif time.monotonic() - self.last_weights >= self.cfg.actors.weight_poll_s:
                self._pull_from_store()

    # -- the loop body ------------------------------------------------------------------------
    def run_batch(self, n: int | None = None) -> BatchReport:
        """Wait for room in the replay, sample and score one batch with the newest weights,
        write it. Without room within `actors.weight_poll_s` it returns an empty, blocked
        report (the driver simply asks again)."""
        n = n or self.cfg.sampler.batch_size
        t0 = time.perf_counter()
        if not self._wait_for_room(n, self.cfg.actors.weight_poll_s):
            t = time.perf_counter()
            return self._report([], 0, t0, t0, t, blocked=True, held_s=t - t0)
        held_s = time.perf_counter() - t0
        with self.model_lock:
            if self.pending is not None:
                self._apply_pending()
            t0 = time.perf_counter()
            trajs = self.actor.sample_batch(n)
        t1 = time.perf_counter()
        written, blocked = trajs, False
        try:
            self.writer.write_many(trajs)  # one round trip when the limiter takes them all
        except ReplayTimeout as e:
            self._say(logging.WARNING, "%s", e)
            written, blocked = [trajs[i] for i in e.written], True
        t2 = time.perf_counter()
        held_s += (t2 - t1) if blocked else 0.0  # a write the limiter held to its timeout
        return self._report(written, len(trajs), t0, t1, t2, blocked, held_s)

    def _wait_for_room(self, n: int, wait_s: float) -> bool:
        """Whether the replay takes (up to) a batch now, waiting at most wait_s; weights that
        arrive meanwhile are applied. The rule is the replay's (`ReplayWriter.wait_for_room`)."""
        return self.writer.wait_for_room(n, wait_s, on_poll=self._refresh_weights)

    def _report(
        self,
        written: list[Trajectory],
        sampled: int,
        t0: float,
        t1: float,
        t2: float,
        blocked: bool,
        held_s: float = 0.0,
    ) -> BatchReport:
        forget = [t for t in written if t.role == "forget"]
        return BatchReport(
            actor_id=self.actor_id,
            written=len(written),
            sampled=sampled,
            version=written[0].version if written else self.actor.version,
            reward_sum=float(sum(t.reward for t in written)),
            forget=len(forget),
            forget_positive=round(ua_proxy(forget) * len(forget)) if forget else 0,
            forget_reward_sum=float(sum(t.reward for t in forget)),
            sample_s=t1 - t0,
            write_s=t2 - t1,
            blocked=blocked,
            next_seed=self.actor.next_seed,
            rng=self.actor.rng.get_state(),
            held_s=held_s,
        )

    def ping(self) -> dict:
        return self._where()

    def close(self) -> None:
        self.writer.close()
        self.store.close()
