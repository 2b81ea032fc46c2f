"""`train_ray(cfg)`: the run loop (training/loop.py) with the learner and the actors as Ray actors.

`RayRuntime` only places the workers and routes calls: the learner group (`learner.num_workers`
actors, learner_group.py) with one `try_step` per rank in flight (it waits at most
`runtime.learner_wait_s` on the replay, so the driver stays responsive to Ctrl-C and dead
actors; a rank that dies takes the group back to the last checkpoint), `actors.num` actor
workers kept sampling by the pool (restarts with back-off: supervisor.py), each published
version pushed to every live actor as one object-store reference. It turns finished calls into
the loop's events; the loop decides everything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from rich.console import Console

from critic_unlearn.config import RunConfig
from critic_unlearn.runtime.cluster import (
    check_first_contact,
    check_replay_reachable,
    ray_cluster,
)
from critic_unlearn.runtime.errors import RuntimeFailure
from critic_unlearn.runtime.learner_group import LearnerGroup
from critic_unlearn.runtime.supervisor import (
    ActorPool,
    WeightsAck,
    resolve_num_actors,
    summarize_error,
)
from critic_unlearn.training.errors import LearnerDied
from critic_unlearn.training.loop import RunLoop, RunState, prepare_run, replay_server
from critic_unlearn.training.reports import Event, StepDone, StepReport, WeightsApplied
from critic_unlearn.training.setup import TrainResult
from critic_unlearn.types import WeightsPacket


def train_ray(cfg: RunConfig, console: Console | None = None) -> TrainResult:
    console = console or Console(stderr=True)
    check_first_contact(cfg)  # model, Redis, Ray address: one line in seconds, before anything
    cfg, run_dir = prepare_run(cfg, console)  # before Ray: the driver pretrains the critic
    auto = cfg.replay.url == "auto"
    with ray_cluster(cfg):
        check_replay_reachable(cfg, auto)
        with replay_server(cfg) as cfg:
            runtime = RayRuntime(cfg, cfg.replay.namespace or run_dir.name)
            return RunLoop(cfg, run_dir, runtime, console).run()


@dataclass
class Broadcast:
    """One version pushed to the actors: when publishing began, acks still due, the last ack."""

    started: float
    acks_left: int
    last_ack: float


class RayRuntime:
    def __init__(self, cfg: RunConfig, namespace: str) -> None:
        self.cfg, self.namespace = cfg, namespace
        # The pretrained critic goes to the learner as bytes in the object store: its path is on
        # this (the driver's) node, and the learner may run on another one.
        init = Path(cfg.critic.init) if cfg.critic.init not in (None, "auto") else None
        self.critic_init = ray.put(init.read_bytes()) if init and init.is_file() else None
        self.learner = self._new_learner()
        self.learner_pids: list[int] = []
        self.learner_restarts = 0
        self.pool = ActorPool(cfg, namespace, resolve_num_actors(cfg, ray.cluster_resources()))
        self.num_actors = len(self.pool.slots)
        self.learner_refs: list[Any] = []  # the try_step calls in flight, one per rank
        self.learner_done: dict[Any, Any] = {}  # ... those that returned, with their reports
        self.carried: list[Event] = []  # events of a poll that ended in LearnerDied
        self.broadcasts: dict[int, Broadcast] = {}  # version -> its acks
        self.ack_version: dict[Any, int] = {}  # set_weights call -> the version it pushed

    def _new_learner(self) -> LearnerGroup:
        """A learner group whose ranks have joined; a group that cannot form fails the run
        (no checkpoint can help it)."""
        group = None
        try:
            group = LearnerGroup(self.cfg, self.namespace, critic_init=self.critic_init)
            ray.get(group.joined)
        except ray.exceptions.RayError as e:
            if group is not None:
                group.kill()
            raise RuntimeFailure(f"the learner failed to start ({summarize_error(e)})") from None
        return group

    def start(self, state: RunState | None) -> StepReport:
        """Restore (or clear) through the learner, then start every actor from its saved seed
        stream and the learner's current weights; they load their models in parallel."""
        part = state and {"learner": state.learner, "replay_limiter": state.replay_limiter}
        setup = self._learner_all(self.learner.call("setup", part))[0]
        self.learner_pids = self._learner_all(self.learner.call("pid"))
        if setup.published is not None:
            self.pool.weights = [setup.published.ref]
            self.pool.weights_version = setup.published.version
        self.pool.start_all(state.actors if state else {})
        return setup

    def restart_learner(self, state: RunState | None) -> StepReport:
        """A new learner actor restored from `state`; every live actor gets its weights with
        `reset` (their versions were ahead of the checkpoint), restarted ones start from them.
        Records sampled by the lost versions stay in the replay (their behaviour log-probs are
        exact, so they are ordinary off-policy data)."""
        self.learner.kill()
        self.learner_refs, self.learner_done = [], {}
        self.learner_restarts += 1
        self.learner = self._new_learner()
        part = state and {"learner": state.learner, "replay_limiter": state.replay_limiter}
        setup = self._learner_all(self.learner.call("setup", part, restart=True))[0]
        self.learner_pids = self._learner_all(self.learner.call("pid"))
        self.broadcasts.clear()
        self.ack_version.clear()
        if setup.published is not None:
            p = setup.published
            for ack in self.pool.broadcast([p.ref], p.version, reset=True):
                self.ack_version[ack] = p.version
            self.broadcasts[p.version] = Broadcast(p.started, len(self.ack_version), p.started)
        return setup

    def poll(self, timeout_s: float, want_step: bool) -> list[Event]:
        if want_step and not self.learner_refs:
            self.learner_refs = self.learner.call("try_step", self.cfg.runtime.learner_wait_s)
        self.pool.restart_due()
        waiting = [r for r in self.learner_refs if r not in self.learner_done]
        refs = [*self.pool.inflight, *waiting]
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout_s)
        if ready:  # take everything that is done, not just the first
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        events, self.carried = self.carried, []
        learner_ready = [r for r in ready if r in waiting]
        for ref in ready:
            if ref not in learner_ready:
                events.extend(self._on_actor(ref))
        try:  # last: if a rank died, the actors' events above are kept for next time
            for ref in learner_ready:
                self.learner_done[ref] = self._learner_call(ref)
            if self.learner_refs and len(self.learner_done) == len(self.learner_refs):
                report = self.learner_done[self.learner_refs[0]]  # rank 0's
                self.learner_refs, self.learner_done = [], {}
                events.append(StepDone(self._on_step(report)))
        except LearnerDied:
            self.carried = events
            raise
        return events

    def _on_step(self, report: StepReport) -> StepReport:
        p = report.published
        if p is not None:
            acks = self.pool.broadcast([p.ref], p.version)
            self.broadcasts[p.version] = Broadcast(p.started, len(acks), p.started)
            for a in acks:
                self.ack_version[a] = p.version
        return report

    def _on_actor(self, ref: Any) -> list[Event]:
        version = self.ack_version.pop(ref, None)
        event = self.pool.handle(ref)
        if event is None:
            return []
        if not isinstance(event, WeightsAck):
            return [event]
        b = self.broadcasts.get(version) if version is not None else None
        if b is None:
            return []
        b.acks_left -= 1
        b.last_ack = max(b.last_ack, event.time)
        if b.acks_left > 0:
            return []
        del self.broadcasts[version]
        return [WeightsApplied(version, (b.last_ack - b.started) * 1e3)]

    def finish_step(self, timeout_s: float) -> StepReport | None:
        refs, self.learner_refs, self.learner_done = self.learner_refs, [], {}
        if not refs:
            return None
        try:
            return ray.get(refs, timeout=timeout_s)[0]
        except ray.exceptions.RayError:
            return None

    def _learner_call(self, ref: Any, timeout_s: float | None = None) -> Any:
        """A learner call's result; LearnerDied when its process is gone (the loop restarts
        it), RuntimeFailure when it raised (restarting would raise again)."""
        try:
            return ray.get(ref, timeout=timeout_s)
        except ray.exceptions.RayActorError as e:
            raise LearnerDied(f"the learner died ({summarize_error(e)})") from None
        except ray.exceptions.RayError as e:
            if self._lost_a_rank():  # its peer died: the survivor's collective failed first
                raise LearnerDied(
                    f"a learner worker died (a surviving rank: {summarize_error(e)})"
                ) from None
            raise RuntimeFailure(f"the learner failed ({summarize_error(e)})") from None

    def _lost_a_rank(self) -> bool:
        """Whether a rank of a data-parallel learner group is gone (or does not answer)."""
        if len(self.learner) < 2:
            return False
        for worker in self.learner.workers:
            try:
                ray.get(worker.pid.remote(), timeout=60)
            except ray.exceptions.RayError:  # dead, or GetTimeoutError
                return True
        return False

    def _learner_all(self, refs: list[Any], timeout_s: float | None = None) -> list[Any]:
        """Every rank's answer, in rank order; the first rank to fail fails the call (the
        others may be waiting for it in a collective)."""
        done: dict[Any, Any] = {}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=timeout_s)
            if not ready:
                raise RuntimeFailure(f"the learner did not answer within {timeout_s} s")
            for ref in ready:
                done[ref] = self._learner_call(ref)
        return [done[r] for r in refs]

    def learner_state(self, timeout_s: float | None) -> dict[str, Any]:
        return self._learner_all(self.learner.call("checkpoint_state"), timeout_s)[0]

    def actor_states(self) -> dict[int, dict[str, Any]]:
        return self.pool.states()

    def adapter(self, timeout_s: float | None) -> WeightsPacket:
        tensors, manifest, version = self._learner_call(self.learner.lead("adapter"), timeout_s)
        return WeightsPacket(version, tensors, manifest)

    def status(self) -> dict[str, Any]:
        return {
            "actors": self.pool.status(),
            "learner": {"pid": self.learner_pids[0] if self.learner_pids else None,
                        "pids": self.learner_pids, "restarts": self.learner_restarts},
        }

    def stop(self) -> None:
        self.pool.stop()
        self.learner.kill()

