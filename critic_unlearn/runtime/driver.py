"""`train_ray(cfg)`: the Ray runtime's entry point, with `train_local`'s semantics.

One driver process builds the topology (a learner actor, `actors.num` actor workers), then
loops on whichever call finishes first: a learner step (log metrics, broadcast the new weights'
reference, checkpoint every `learner.checkpoint_every` steps), an actor batch (count, resubmit),
an actor failure (restart with back-off, see supervisor.py). It stops by itself at
`learner.max_steps`; Ctrl-C or SIGTERM checkpoints first. A rerun with the same run directory
resumes: learner state, version, rate limiter, every actor's seed stream and the trajectory
count come from the checkpoint, which has the local trainer's contents (plus all actors).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import ray
from rich.console import Console

from critic_unlearn.config import RunConfig
from critic_unlearn.io_utils import announce_run_folder, atomic_write_text
from critic_unlearn.learner.checkpoint import load_checkpoint, save_checkpoint
from critic_unlearn.runtime.cluster import (
    check_first_contact,
    check_replay_reachable,
    ray_cluster,
)
from critic_unlearn.runtime.errors import RuntimeFailure
from critic_unlearn.runtime.learner_worker import LearnerWorker, StepReport
from critic_unlearn.runtime.progress import ProgressView, RunStats
from critic_unlearn.runtime.supervisor import ActorPool, resolve_num_actors, summarize_error
from critic_unlearn.training.critic_pretrain import use_pretrained_critic
from critic_unlearn.training.local import CHECKPOINT, export_adapter, replay_server
from critic_unlearn.training.metrics import MetricsLogger
from critic_unlearn.training.plots import plot_run
from critic_unlearn.training.setup import TrainResult, prepare_run_dir
from critic_unlearn.training.snapshots import save_snapshot
from critic_unlearn.types import WeightsPacket

log = logging.getLogger(__name__)
LEARNER_WAIT_S = 1.0  # longest a learner call waits on the replay before reporting back
STATUS = "runtime.json"  # pids, restarts, versions: for operators (and the fault tests)


def train_ray(cfg: RunConfig, console: Console | None = None) -> TrainResult:
    console = console or Console(stderr=True)
    check_first_contact(cfg)  # model, Redis, Ray address: one line in seconds, before anything
    run_dir = prepare_run_dir(cfg)
    announce_run_folder(run_dir)  # first line of the job's log; the CLI's JSON is the last
    cfg = use_pretrained_critic(cfg, run_dir, console)  # before Ray: the driver pretrains
    auto = cfg.replay.url == "auto"
    with ray_cluster(cfg):
        check_replay_reachable(cfg, auto)
        with replay_server(cfg) as cfg:
            return Driver(cfg, run_dir, console).run()


class Driver:
    def __init__(self, cfg: RunConfig, run_dir: Path, console: Console) -> None:
        self.cfg, self.run_dir, self.console = cfg, run_dir, console
        self.namespace = cfg.replay.namespace or run_dir.name
        self.ckpt = run_dir / CHECKPOINT
        self.trajectories = 0
        self.steps = self.version = 0
        self.last: dict[str, float] = {}
        self.checkpointed_at = -1
        self.pending: dict[int, list] = {}  # version -> [publish start, acks left, last ack]
        self.ack_version: dict[Any, int] = {}
        self.progress_at = time.monotonic()  # last learner step, or an actor (re)start
        self.learner_ref: Any = None  # the try_step call in flight
        self.wait_reason = ""

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        t0 = time.perf_counter()
        state = load_checkpoint(self.ckpt) if self.ckpt.exists() else None
        self._launch()
        try:
            self._setup(state)
            with ProgressView(self.stats, self.console, self.cfg.runtime.progress_every_s) as v:
                self.view = v
                self._run_to_budget()
            self._checkpoint()
            self._write_status()
            export_adapter(self.run_dir, self._adapter())
        finally:
            self.pool.stop()
            ray.kill(self.learner, no_restart=True)
            self.metrics.close()
        plot_run(self.run_dir)
        wall = time.perf_counter() - t0
        return TrainResult(  # absolute: the CLI's last line says where the run is
            self.run_dir.absolute(), self.trajectories, self.steps, self.version, wall, self.last
        )

    def _launch(self) -> None:
        """Create the learner and the actors; they load their models in parallel."""
        cfg = self.cfg
        self.learner = (
            ray.remote(LearnerWorker)
            .options(num_cpus=cfg.runtime.learner_cpus, num_gpus=cfg.learner.gpus, max_restarts=0)
            .remote(cfg, self.namespace)
        )
        self.pool = ActorPool(cfg, self.namespace, resolve_num_actors(cfg, ray.cluster_resources()))
        self.metrics = MetricsLogger(self.run_dir)

    def _setup(self, state: dict | None) -> None:
        """Restore (or clear) through the learner, then start every actor from its saved seed
        stream and the learner's current weights."""
        setup = self._learner_call(self.learner.setup.remote(state and _learner_part(state)))
        self.steps, self.version = setup.steps, setup.version
        if state:
            self.trajectories = int(state["trajectories"])
            self.checkpointed_at = self.steps
            self.console.print(
                f"resumed from {self.ckpt} at learner step {self.steps}, version "
                f"{self.version}, {self.trajectories} trajectories",
                soft_wrap=True,
                highlight=False,
            )
        lc = self.cfg.learner
        self.stats = RunStats(
            len(self.pool.slots),
            self.cfg.replay.capacity,
            lc.max_steps,
            self.trajectories,
            self.steps,
            self.version,
        )
        if setup.published is not None:
            self.pool.weights = [setup.published.ref]
            self.pool.weights_version = setup.published.version
        self.pool.start_all(_actor_states(state))
        self._write_status()

    def _run_to_budget(self) -> None:
        """The loop, and what an interruption or a failure leaves behind: a checkpoint."""
        try:
            self._loop()
        except (KeyboardInterrupt, SystemExit):
            self.view.print("interrupted: finishing the learner step, writing a checkpoint")
            self._drain_learner(timeout_s=120)
            self._checkpoint(timeout_s=120)
            self.view.print(
                f"checkpoint at step {self.checkpointed_at}; rerun to resume "
                f"(run folder {self.run_dir.absolute()})"
            )
            raise
        except RuntimeFailure as e:
            self._drain_learner(timeout_s=120)
            self._checkpoint(timeout_s=120)
            raise type(e)(
                f"{e}; checkpoint at step {self.checkpointed_at} in {self.run_dir.absolute()}, "
                "rerun the same command to resume"
            ) from None

    def _loop(self) -> None:
        max_steps = self.cfg.learner.max_steps  # policy updates (version); warm-up on top
        if self.version < max_steps:
            self.learner_ref = self.learner.try_step.remote(LEARNER_WAIT_S)
        self.progress_at = time.monotonic()
        while self.version < max_steps:
            self._check_stall()
            self.pool.restart_due()
            refs = [*self.pool.inflight, self.learner_ref]
            ready, _ = ray.wait(refs, num_returns=1, timeout=0.5)
            if ready:  # take everything that is done, not just the first
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                if ref == self.learner_ref:
                    self.learner_ref = None
                    self._on_step(self._learner_call(ref))
                    if self.version < max_steps:
                        self.learner_ref = self.learner.try_step.remote(LEARNER_WAIT_S)
                else:
                    self._on_actor(ref)
            self.view.refresh()

    def _drain_learner(self, timeout_s: float) -> None:
        """Take the learner step in flight, so metrics.jsonl and the checkpoint agree."""
        ref, self.learner_ref = self.learner_ref, None
        if ref is None:
            return
        try:
            report = ray.get(ref, timeout=timeout_s)
        except ray.exceptions.RayError:
            return
        self._on_step(report)

    # -- events -------------------------------------------------------------------------------
    def _check_stall(self) -> None:
        """Fail with the replay's own explanation instead of waiting forever."""
        idle = time.monotonic() - self.progress_at
        if idle > self.cfg.runtime.stall_timeout_s:
            raise RuntimeFailure(
                f"no learner step for {idle:.0f} s (runtime.stall_timeout_s = "
                f"{self.cfg.runtime.stall_timeout_s:g}); the learner's last wait: "
                f"{self.wait_reason or 'none'}; actors: {self.stats.line().split('|')[-1].strip()}"
            )

    def _on_step(self, r: StepReport) -> None:
        self._publish(r)
        if not r.stepped:
            self.stats.learner_status = "waiting for replay"
            self.wait_reason = r.reason
            return
        self.progress_at = time.monotonic()
        self.steps, self.version = r.steps, r.version
        self.stats.on_step(r.steps, r.version, r.staleness, r.metrics.get("replay/size", 0))
        self.last = {
            **r.metrics,
            **self.stats.metrics(),
            "actor/trajectories": float(self.trajectories),
            "learner/step_s": r.step_s,
        }
        self.metrics.log(r.steps, self.last)
        if r.steps % self.cfg.learner.checkpoint_every == 0:
            self._checkpoint()

    def _publish(self, r: StepReport) -> None:
        p = r.published
        if p is None:
            return
        acks = self.pool.broadcast([p.ref], p.version)
        self.pending[p.version] = [p.started, len(acks), p.started]
        for a in acks:
            self.ack_version[a] = p.version

    def _on_actor(self, ref: Any) -> None:
        version = self.ack_version.pop(ref, None)
        kind, actor_id, result = self.pool.handle(ref)
        if version is not None and version in self.pending:
            entry = self.pending[version]
            entry[1] -= 1
            if kind == "weights":
                entry[2] = max(entry[2], result["time"])
            if entry[1] <= 0:
                del self.pending[version]
                self.stats.publish_ms.append((entry[2] - entry[0]) * 1e3)
        view = self.stats.actors.get(actor_id)
        if kind == "batch":
            self.trajectories += result.written
            self.stats.on_batch(result)
        elif kind == "start":
            self.progress_at = max(self.progress_at, time.monotonic())
            view.pid, view.version, view.status = result["pid"], result["version"], "sampling"
            view.restarts = self.pool.slots[actor_id].restarts
            self._write_status()
        elif kind == "failed":
            view.status, view.pid = "restarting", None
            self.view.print(f"actor {actor_id} failed: {result}; restarting with back-off")
            self._write_status()

    # -- learner, checkpoints, status ---------------------------------------------------------
    def _learner_call(self, ref: Any, timeout_s: float | None = None) -> Any:
        try:
            return ray.get(ref, timeout=timeout_s)
        except ray.exceptions.RayError as e:
            raise RuntimeFailure(f"the learner failed ({summarize_error(e)})") from None

    def _checkpoint(self, timeout_s: float | None = None) -> None:
        if self.checkpointed_at == self.steps:
            return
        try:
            part = self._learner_call(self.learner.checkpoint_state.remote(), timeout_s)
        except RuntimeFailure as e:
            log.error("no checkpoint written: %s", e)
            return
        steps = int(part["learner"]["steps"])
        states = self.pool.states()
        state = {**part, "actors": states, "trajectories": self.trajectories}
        if 0 in states:  # the local trainer's key (a copy: a checkpoint stores no alias)
            state["actor"] = {"next_seed": states[0]["next_seed"], "rng": states[0]["rng"].clone()}
        save_checkpoint(self.ckpt, state)
        lp = part["learner"]
        meta = {"version": lp["version"], "lora_config_hash": lp["lora_config_hash"]}
        save_snapshot(self.run_dir, steps, self.trajectories, lp["adapter"], meta)
        self.checkpointed_at = steps
        self._write_status()

    def _adapter(self) -> WeightsPacket:
        tensors, manifest, version = self._learner_call(self.learner.adapter.remote())
        return WeightsPacket(version, tensors, manifest)

    def _write_status(self) -> None:
        actors = {
            str(i): {
                "pid": s.pid,
                "version": s.version,
                "trajectories": s.trajectories,
                "trajectories_this_incarnation": s.incarnation_trajectories,
                "restarts": s.restarts,
                "failures": s.failures,
                "last_error": s.last_error,
            }
            for i, s in self.pool.slots.items()
        }
        status = {"actors": actors, "steps": self.steps, "version": self.version}
        atomic_write_text(self.run_dir / STATUS, json.dumps(status, indent=1))


def _learner_part(state: dict) -> dict:
    return {"learner": state["learner"], "replay_limiter": state["replay_limiter"]}


def _actor_states(state: dict | None) -> dict[int, dict]:
    if state is None:
        return {}
    if "actors" in state:
        return {int(k): v for k, v in state["actors"].items()}
    return {0: state["actor"]} if "actor" in state else {}
