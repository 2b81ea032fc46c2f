"""The actor pool and its supervision: start, feed, restart with back-off, give up clearly.

Every actor always has one `run_batch` in flight. When a call fails because the actor died
(SIGKILL, OOM, node lost) or raised, the actor is killed for good and a new one with the same
id is started after `restart_backoff_s * 2**(n-1)` seconds (capped at `restart_backoff_max_s`),
continuing its predecessor's seed stream past the batch that was lost, and starting from the
latest weights. The `max_restarts + 1`-th failure of the same actor stops the run with an error
that names the actor and its last failure.

Why not RLlib's FaultTolerantActorManager (ray/rllib/utils/actor_manager.py, read for 2.60):
it leaves restarting to Ray Core (`max_restarts` on the actor: immediate, no back-off, and the
restarted actor re-runs `__init__` with no way to hand it its predecessor's seed stream), it
dispatches through a generic `apply(func)` whose error path reads an RLlib EnvRunner config
(`self.config.restart_failed_env_runners`), and it silently drops calls above its in-flight
limit. What we need (typed calls, back-off, a per-actor cap, state hand-over) is this file.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from critic_unlearn.config import RunConfig
from critic_unlearn.runtime.actor_worker import RayActorWorker
from critic_unlearn.runtime.errors import ActorFailed, RuntimeFailure
from critic_unlearn.training.reports import ActorFailedEvent, ActorStarted, BatchDone, BatchReport
from critic_unlearn.workers.actor import ActorFactory

log = logging.getLogger(__name__)


@dataclass
class Slot:
    """One actor id's current incarnation and history."""

    actor_id: int
    handle: Any = None  # ray ActorHandle, None while waiting for a restart
    ready: bool = False  # `start` returned
    restarts: int = 0
    failures: int = 0
    restart_at: float = 0.0  # monotonic time of the next start attempt
    state: dict | None = None  # next_seed, rng after the last completed batch
    pid: int | None = None
    version: int = 0
    trajectories: int = 0
    incarnation_trajectories: int = 0  # written by the current incarnation
    last_error: str = ""
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class WeightsAck:
    """An actor took (or checked) a pushed version; `time` is when, by its clock (time.time())."""

    actor_id: int
    version: int
    applied: bool
    time: float


PoolEvent = BatchDone | ActorStarted | ActorFailedEvent | WeightsAck

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def summarize_error(e: BaseException) -> str:
    """One line for people: the original exception of a failed call, not Ray's wrapping."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(cause, ray.exceptions.RayError):
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    lines = [ln.strip() for ln in _ANSI.sub("", str(e)).splitlines() if ln.strip()]
    raised = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b", ln)]
    if raised:  # e.g. an actor's __init__ failed: its exception is the last such line
        return f"{type(e).__name__}: {raised[-1]}"
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def resolve_num_actors(cfg: RunConfig, resources: dict[str, float]) -> int:
    """actors.num, or for "auto" as many as the cluster's GPUs (else CPUs) allow."""
    a = cfg.actors
    if a.num != "auto":
        if a.num < 1:
            raise RuntimeFailure(f"actors.num = {a.num}: run at least one actor (or 'auto')")
        return a.num
    workers = cfg.learner.num_workers
    if a.gpus_per_actor > 0:
        what, learner, per = "GPU", cfg.learner.gpus * workers, a.gpus_per_actor
    else:
        what, learner, per = "CPU", cfg.runtime.learner_cpus * workers, a.cpus_per_actor
    n = math.floor((resources.get(what, 0.0) - learner) / per + 1e-9)
    if n < 1:
        raise RuntimeFailure(
            f"actors.num = 'auto' found room for no actor: the cluster has "
            f"{resources.get(what, 0.0):g} {what}, the learner(s) take {learner:g} and each actor "
            f"needs {per:g}; add {what}s or set actors.num"
        )
    return n


class ActorPool:
    """Creates `n` actors and keeps them sampling; the driver feeds it call results."""

    def __init__(
        self, cfg: RunConfig, namespace: str, n: int, factory: ActorFactory | None = None
    ) -> None:
        """`factory(cfg, actor_id) -> Actor` runs in each worker (default: build_actor)."""
        self.cfg, self.namespace, self.factory = cfg, namespace, factory
        a = cfg.actors
        self.remote_cls = ray.remote(RayActorWorker).options(
            num_cpus=a.cpus_per_actor,
            num_gpus=a.gpus_per_actor,
            max_restarts=0,
            max_concurrency=2,  # run_batch, and set_weights beside it (see actor_worker.py)
            enable_task_events=cfg.runtime.task_events,
        )
        self.slots = {i: Slot(i) for i in range(n)}
        self.weights: list | None = None  # [ObjectRef] of the latest published blob
        self.weights_version = -1
        self.inflight: dict[Any, tuple[str, int]] = {}  # ObjectRef -> (kind, actor id)
        for slot in self.slots.values():
            slot.handle = self.remote_cls.remote(cfg, slot.actor_id, namespace, factory)

    # -- starting -----------------------------------------------------------------------------
    def start_all(self, states: dict[int, dict]) -> None:
        """Hand every actor its saved seed stream and the current weights, then start it."""
        for slot in self.slots.values():
            slot.state = states.get(slot.actor_id, slot.state)
            self._start(slot)

    def _start(self, slot: Slot) -> None:
        ref = slot.handle.start.remote(slot.state, self.weights)
        self.inflight[ref] = ("start", slot.actor_id)

    def restart_due(self) -> None:
        """Start the replacement of every dead actor whose back-off has passed."""
        now = time.monotonic()
        for slot in self.slots.values():
            if slot.handle is None and now >= slot.restart_at:
                slot.restarts += 1
                log.warning(
                    "restarting actor %d (restart %d of at most %d)",
                    slot.actor_id,
                    slot.restarts,
                    self.cfg.actors.max_restarts,
                )
                slot.handle = self.remote_cls.remote(
                    self.cfg, slot.actor_id, self.namespace, self.factory
                )
                slot.started = time.monotonic()
                self._start(slot)

    # -- feeding ------------------------------------------------------------------------------
    def _submit_batch(self, slot: Slot) -> None:
        self.inflight[slot.handle.run_batch.remote()] = ("batch", slot.actor_id)

    def broadcast(self, refs: list, version: int, reset: bool = False) -> list:
        """One `set_weights` call per live actor for this version; returns the ack refs.
        `reset`: actors take it even if their version is newer (a restored learner's)."""
        self.weights, self.weights_version = refs, version
        acks = []
        for slot in self.slots.values():
            if slot.handle is not None:
                ref = slot.handle.set_weights.remote(refs, reset)
                self.inflight[ref] = ("weights", slot.actor_id)
                acks.append(ref)
        return acks

    def handle(self, ref: Any) -> PoolEvent | None:
        """Resolve a finished call into its event (None: a call to an incarnation that already
        failed). A failure schedules the restart; a start or a batch submits the next batch."""
        if ref not in self.inflight:
            return None
        kind, actor_id = self.inflight.pop(ref)
        slot = self.slots[actor_id]
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as e:
            self._fail(slot, e)
            return ActorFailedEvent(
                actor_id, slot.last_error, max(0.0, slot.restart_at - time.monotonic())
            )
        if kind == "start":
            slot.ready, slot.pid, slot.version = True, result["pid"], result["version"]
            if slot.state is None:  # so a death in the first batch skips its seeds too
                slot.state = {"next_seed": result["next_seed"], "rng": result["rng"]}
            self._submit_batch(slot)
            return ActorStarted(actor_id, slot.pid, slot.version, slot.restarts)
        if kind == "batch":
            report: BatchReport = result
            slot.state = report.actor_state()
            slot.version = report.version
            slot.trajectories += report.written
            slot.incarnation_trajectories += report.written
            self._submit_batch(slot)
            return BatchDone(report)
        slot.version = result["version"]  # the actor's own (a reset may lower it)
        return WeightsAck(actor_id, result["version"], result["applied"], result["time"])

    def status(self) -> dict[str, dict[str, Any]]:
        """Per actor, for runtime.json: pid, version, trajectories, restarts, last error."""
        return {
            str(i): {
                "pid": s.pid,
                "version": s.version,
                "trajectories": s.trajectories,
                "trajectories_this_incarnation": s.incarnation_trajectories,
                "restarts": s.restarts,
                "failures": s.failures,
                "last_error": s.last_error,
            }
            for i, s in self.slots.items()
        }

    def _fail(self, slot: Slot, e: Exception) -> None:
        slot.last_error = summarize_error(e)
        slot.failures += 1
        for ref, (_, aid) in list(self.inflight.items()):
            if aid == slot.actor_id:
                del self.inflight[ref]  # calls to the dead incarnation: nothing will come
        ray.kill(slot.handle, no_restart=True)
        slot.handle, slot.ready, slot.pid = None, False, None
        slot.incarnation_trajectories = 0
        a = self.cfg.actors
        if slot.failures > a.max_restarts:
            raise ActorFailed(
                f"actor {slot.actor_id} failed {slot.failures} times, more than "
                f"actors.max_restarts = {a.max_restarts} allows; last failure: "
                f"{slot.last_error}. See its log lines (prefixed actor-{slot.actor_id}) and "
                "fix the cause, or raise actors.max_restarts"
            )
        if slot.state is not None:  # skip the batch that was lost: its seeds may be in Redis
            slot.state = {
                **slot.state,
                "next_seed": slot.state["next_seed"] + self.cfg.sampler.batch_size,
            }
        delay = min(a.restart_backoff_s * 2 ** (slot.failures - 1), a.restart_backoff_max_s)
        slot.restart_at = time.monotonic() + delay
        log.warning(
            "actor %d failed (%s); restarting in %.1f s", slot.actor_id, slot.last_error, delay
        )

    # -- state --------------------------------------------------------------------------------
    def states(self) -> dict[int, dict]:
        return {i: s.state for i, s in self.slots.items() if s.state is not None}

    def total_restarts(self) -> int:
        return sum(s.restarts for s in self.slots.values())

    def stop(self) -> None:
        """Kill every actor now (writes are atomic; an unfinished batch is simply not counted)."""
        for slot in self.slots.values():
            if slot.handle is not None:
                ray.kill(slot.handle, no_restart=True)
                slot.handle = None
        self.inflight.clear()
