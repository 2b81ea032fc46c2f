"""`train_local(cfg)`: the run loop with the learner and one actor in this process, no Ray.

The debugging and benchmarking path; it imports no Ray. The workers are the ones the Ray runtime
wraps (`workers.LearnerWorker`, `workers.ActorWorker`), called directly, so both runtimes share
every rule they hold: the replay's rate limiter and its stale-buffer release, the weight checks. The
loop is training/loop.py, the same as the Ray runtime's. Calls alternate: the learner steps while
the replay grants it a batch; when it does not (too few fresh records), the actor samples another.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from rich.console import Console

from critic_unlearn.config import RunConfig
from critic_unlearn.learner.publisher import Published
from critic_unlearn.training.loop import RunLoop, RunState, prepare_run, replay_server
from critic_unlearn.training.reports import (
    ActorStarted,
    BatchDone,
    Event,
    StepDone,
    StepReport,
)
from critic_unlearn.training.setup import TrainResult
from critic_unlearn.types import WeightsPacket
from critic_unlearn.workers.actor import ActorWorker
from critic_unlearn.workers.learner import LearnerWorker


def train_local(cfg: RunConfig, console: Console | None = None) -> TrainResult:
    console = console or Console(stderr=True)
    cfg, run_dir = prepare_run(cfg, console)
    with replay_server(cfg) as cfg:
        runtime = LocalRuntime(cfg, cfg.replay.namespace or run_dir.name)
        return RunLoop(cfg, run_dir, runtime, console).run()


class LocalPublisher:
    """The learner's `Publisher` in process: the packet itself reaches the actor, unencoded."""

    def __init__(self) -> None:
        self.latest: Published | None = None

    def publish(self, packet: WeightsPacket) -> None:
        self.latest = Published(packet.version, packet, time.time())

    def take_new(self) -> Published | None:
        latest, self.latest = self.latest, None
        return latest


class LocalRuntime:
    """The learner and actor 0 as plain objects; `poll` does one unit of work and returns."""

    num_actors = 1

    def __init__(self, cfg: RunConfig, namespace: str) -> None:
        if cfg.runtime.num_threads:
            torch.set_num_threads(cfg.runtime.num_threads)
        self.cfg, self.namespace = cfg, namespace
        self.learner = self._new_learner()
        self.actor = ActorWorker(cfg, 0, namespace)
        self.actor_state: dict[str, Any] | None = None
        self.trajectories = 0
        self.restarts = 0  # of the learner
        self.events: list[Event] = []

    def _new_learner(self) -> LearnerWorker:
        return LearnerWorker(self.cfg, self.namespace, publisher=lambda _store: LocalPublisher())

    def start(self, state: RunState | None) -> StepReport:
        part = state and {"learner": state.learner, "replay_limiter": state.replay_limiter}
        setup = self.learner.setup(part)
        self.actor_state = state.actors.get(0) if state else None
        started = self.actor.start(self.actor_state)
        self._deliver(setup)
        self.events.append(ActorStarted(0, started["pid"], self.actor.actor.version, 0))
        return setup

    def _deliver(self, report: StepReport, reset: bool = False) -> None:
        if report.published is not None:
            self.actor.receive(report.published.ref, reset)

    def poll(self, timeout_s: float, want_step: bool) -> list[Event]:
        events, self.events = self.events, []
        if want_step:
            report = self.learner.try_step(0.0)
            self._deliver(report)
            events.append(StepDone(report))
            if report.stepped:
                return events
        batch = self.actor.run_batch()
        self.trajectories += batch.written
        self.actor_state = batch.actor_state()
        events.append(BatchDone(batch))
        return events

    def finish_step(self, timeout_s: float) -> StepReport | None:
        return None  # calls here return before the next one starts

    def learner_state(self, timeout_s: float | None) -> dict[str, Any]:
        return self.learner.checkpoint_state()

    def actor_states(self) -> dict[int, dict[str, Any]]:
        return {} if self.actor_state is None else {0: self.actor_state}

    def adapter(self, timeout_s: float | None) -> WeightsPacket:
        tensors, manifest, version = self.learner.adapter()
        return WeightsPacket(version, tensors, manifest)

    def restart_learner(self, state: RunState | None) -> StepReport:
        """A new learner restored from `state` (None: from scratch); the replay and its live
        counters stay, and the actor takes the restored weights even if it holds newer ones."""
        self.learner.close()
        self.learner = self._new_learner()
        part = state and {"learner": state.learner, "replay_limiter": state.replay_limiter}
        report = self.learner.setup(part, restart=True)
        self._deliver(report, reset=True)
        self.restarts += 1
        return report

    def status(self) -> dict[str, Any]:
        learner = {"pid": os.getpid(), "restarts": self.restarts}
        return {"actors": self._actor_status(), "learner": learner}

    def _actor_status(self) -> dict[str, dict[str, Any]]:
        return {
            "0": {
                "pid": os.getpid(),
                "version": self.actor.actor.version,
                "trajectories": self.trajectories,
                "trajectories_this_incarnation": self.trajectories,
                "restarts": 0,
                "failures": 0,
                "last_error": "",
            }
        }

    def stop(self) -> None:
        self.learner.close()
        self.actor.close()
