"""The order of a run, written once: start or resume, sample and learn to the budget, checkpoint,
snapshot, log, stop cleanly on Ctrl-C or a failure, export the adapter.

A runtime only decides where the learner and the actors live and how calls reach them
(`runtime/local.py`: in this process; `runtime/driver.py`: Ray actors). It implements `Runtime`
and turns its calls' results into the typed events of training/reports.py; `RunLoop` does the
rest, identically for both. This is the split of an environment loop from the builder and the
placement of its parts, as in DeepMind's Acme.

One checkpoint format (`RunState`): the learner's state, the rate limiter's counters, every
actor's seed stream and the trajectory count. A checkpoint written by one runtime resumes in the
other.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from critic_unlearn.codec import encode_state_dict
from critic_unlearn.config import LoraConfig, RunConfig, load_config
from critic_unlearn.io_utils import announce_run_folder, atomic_write_bytes, atomic_write_text
from critic_unlearn.learner.checkpoint import load_checkpoint, save_checkpoint
from critic_unlearn.replay import RedisServer
from critic_unlearn.training.critic_pretrain import use_pretrained_critic
from critic_unlearn.training.errors import LearnerDied, RunFailure
from critic_unlearn.training.metrics import MetricsLogger
from critic_unlearn.training.plots import plot_run
from critic_unlearn.training.progress import ProgressView, RunStats
from critic_unlearn.training.reports import (
    ActorFailedEvent,
    ActorStarted,
    BatchDone,
    Event,
    StepDone,
    StepReport,
    WeightsApplied,
)
from critic_unlearn.training.setup import TrainResult, prepare_run_dir
from critic_unlearn.training.snapshots import save_snapshot
from critic_unlearn.training.storage import RunStore
from critic_unlearn.types import WeightsPacket

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoints/latest.safetensors"
STATUS = "runtime.json"  # pids, restarts, versions: for operators (and the fault tests)
BALANCE_MIN_STEPS = 10  # learner steps before the actor/learner balance is judged


# -- the checkpoint ---------------------------------------------------------------------------
@dataclass
class RunState:
    """Everything a run resumes from; the same in both runtimes."""

    learner: dict[str, Any]
    replay_limiter: dict[str, Any]
    actors: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> next_seed, rng
    trajectories: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "learner": self.learner,
            "replay_limiter": self.replay_limiter,
            "actors": self.actors,
            "trajectories": self.trajectories,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunState:
        actors = {int(k): v for k, v in d.get("actors", {}).items()}
        if not actors and "actor" in d:  # written before there was one format
            actors = {0: d["actor"]}
        return cls(d["learner"], d["replay_limiter"], actors, int(d["trajectories"]))


def read_run_state(path: Path) -> RunState | None:
    return RunState.from_dict(load_checkpoint(path)) if path.exists() else None


# -- what a runtime provides ------------------------------------------------------------------
class Runtime(Protocol):
    """Where the learner and actors live. Calls may block for at most the timeouts given."""

    num_actors: int

    def start(self, state: RunState | None) -> StepReport:
        """Build or restore the learner (clearing the replay on a fresh run), publish its
        weights, start every actor from its saved seed stream. Returns the learner's report."""

    def poll(self, timeout_s: float, want_step: bool) -> list[Event]:
        """What finished within `timeout_s`; keeps one learner step in flight if `want_step`."""

    def finish_step(self, timeout_s: float) -> StepReport | None:
        """The learner step in flight, if any, so the checkpoint and the metrics agree."""

    def learner_state(self, timeout_s: float | None) -> dict[str, Any]:
        """{"learner": ..., "replay_limiter": ...}: the learner's share of a checkpoint."""

    def actor_states(self) -> dict[int, dict[str, Any]]:
        """Each actor's seed stream after its last completed batch."""

    def adapter(self, timeout_s: float | None) -> WeightsPacket:
        """The learner's current adapter."""

    def restart_learner(self, state: RunState | None) -> StepReport:
        """Replace a dead learner: restore it from `state` (None: from scratch), keep the replay
        and its live counters, and hand its weights to every actor even if they are newer."""

    def status(self) -> dict[str, Any]:
        """For runtime.json: {"actors": {id: pid, version, trajectories, restarts, failures,
        last_error}, "learner": {pid, restarts}}."""

    def stop(self) -> None: ...


# -- helpers both entry points use -------------------------------------------------------------
def prepare_run(cfg: RunConfig, console: Console) -> tuple[RunConfig, Path]:
    """The run folder (announced on stdout's first line) and the pretrained critic, if any."""
    run_dir = prepare_run_dir(cfg).absolute()
    announce_run_folder(run_dir)
    return use_pretrained_critic(cfg, run_dir, console), run_dir


@contextlib.contextmanager
def replay_server(cfg: RunConfig) -> Iterator[RunConfig]:
    """replay.url = "auto": a private redis-server for this run, stopped afterwards."""
    if cfg.replay.url != "auto":
        yield cfg
        return
    server = RedisServer(die_with_parent=True).start()
    try:
        yield cfg.model_copy(update={"replay": cfg.replay.model_copy(update={"url": server.url})})
    finally:
        server.stop()


def export_adapter(run_dir: Path, packet: WeightsPacket, lora: LoraConfig | None = None) -> Path:
    """RUN/adapter/: our adapter.safetensors (manifest, checksum), and the same tensors in
    diffusers' LoRA format and peft's (critic_unlearn.export), so `pipe.load_lora_weights(RUN/
    adapter)` and `PeftModel.from_pretrained(unet, RUN/adapter)` work. `lora` defaults to the
    run's config.yaml. Returns the path of adapter.safetensors."""
    from critic_unlearn.export import adapter_family, write_adapter_formats

    path = Path(run_dir) / "adapter" / "adapter.safetensors"
    atomic_write_bytes(path, encode_state_dict(packet.state_dict, packet.manifest))
    try:
        if lora is None:
            lora = load_config(Path(run_dir) / "config.yaml", []).lora
        write_adapter_formats(path.parent, packet.state_dict, lora,
                              packet.manifest.get("base_model"),
                              adapter_family(packet.state_dict, path))
    except Exception as e:  # adapter.safetensors is safe; the standard formats can be redone
        log.warning(
            "could not write the diffusers/peft copies of %s (%s: %s); write them with "
            "`critic-unlearn export %s`", path, type(e).__name__, e, run_dir
        )
    return path


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (`ray job stop`, a scheduler's preemption) takes the Ctrl-C path: checkpoint."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- the loop ---------------------------------------------------------------------------------
class RunLoop:
    """Drives one run to `learner.max_steps` policy updates through a `Runtime`."""

    def __init__(self, cfg: RunConfig, run_dir: Path, runtime: Runtime, console: Console) -> None:
        self.cfg, self.run_dir, self.rt, self.console = cfg, Path(run_dir), runtime, console
        self.ckpt = self.run_dir / CHECKPOINT
        self.trajectories = self.steps = self.version = self.updates = 0
        self.checkpointed_at = -1
        self.last: dict[str, float] = {}
        self.progress_at = time.monotonic()  # last learner step, or an actor (re)start
        self.wait_reason = ""
        self.learner_restarts = 0
        self.balance_advised = False
        self.store = RunStore.for_run(cfg, self.run_dir)  # a URL run_dir's remote copy

    def run(self) -> TrainResult:
        t0 = time.perf_counter()
        every_s = self.cfg.runtime.progress_every_s
        state = read_run_state(self.ckpt)
        self.metrics = MetricsLogger(self.run_dir)
        finished = False
        try:
            with sigterm_as_exit():  # from the start: a SIGTERM while workers start exits cleanly
                self._start(state)
                with ProgressView(self.stats, self.console, every_s) as v:
                    self.view = v
                    self._run_to_budget()
            self._checkpoint()
            export_adapter(self.run_dir, self.rt.adapter(None))
            finished = True
        finally:
            self.rt.stop()
            self.metrics.close()
            if not finished:  # interrupted or failed: what the last checkpoint wrote goes up too
                self.store.push()
        plot_run(self.run_dir)
        self.store.push(final=True)
        wall = time.perf_counter() - t0
        return TrainResult(
            self.run_dir, self.trajectories, self.steps, self.version, wall, self.last,
            self.updates,
        )

    def _start(self, state: RunState | None) -> None:
        setup = self.rt.start(state)
        self.steps, self.version, self.updates = setup.steps, setup.version, setup.updates
        if state is not None:
            self.trajectories = state.trajectories
            self.checkpointed_at = self.steps
            self.metrics.rewind(self.steps)  # steps after the checkpoint are done again
            saved = int(state.learner["version"])  # the checkpoint's; a skip labels past it
            skipped = (f" (versions up to {self.version - 1} were published after it: new "
                       f"weights are labelled from {self.version} on)"
                       if self.version > saved else "")
            self.console.print(
                f"resumed from {self.ckpt} at learner step {self.steps}, version "
                f"{saved}, {self.trajectories} trajectories{skipped}",
                soft_wrap=True,
                highlight=False,
            )
        self.stats = RunStats(
            self.rt.num_actors,
            self.cfg.replay.capacity,
            self.cfg.learner.max_steps,
            self.trajectories,
            self.steps,
            self.version,
        )
        self._write_status()

    def _run_to_budget(self) -> None:
        """The loop, and what an interruption or a failure leaves behind: a checkpoint."""
        timeout = self.cfg.runtime.shutdown_timeout_s
        try:
            self._loop()
        except (KeyboardInterrupt, SystemExit):
            self.view.print("interrupted: finishing the learner step, writing a checkpoint")
            self._finish_step(timeout)
            self._checkpoint(timeout)
            self.view.print(
                f"checkpoint at step {self.checkpointed_at}; rerun to resume "
                f"(run folder {self.run_dir})"
            )
            raise
        except RunFailure as e:
            self._finish_step(timeout)
            self._checkpoint(timeout)
            raise type(e)(
                f"{e}; checkpoint at step {self.checkpointed_at} in {self.run_dir}, "
                "rerun the same command to resume"
            ) from None

    def _loop(self) -> None:
        max_steps = self.cfg.learner.max_steps  # policy updates; warm-up on top
        self.progress_at = time.monotonic()
        while self.updates < max_steps:
            self._check_stall()
            try:
                events = self.rt.poll(0.5, want_step=True)
            except LearnerDied as e:
                self._restart_learner(e)
                continue
            for event in events:
                self._on(event)
            self.view.refresh()

    def _restart_learner(self, error: LearnerDied) -> None:
        """Back to the last checkpoint with a new learner; the actors and the replay go on."""
        limit = self.cfg.runtime.learner_max_restarts
        if self.learner_restarts >= limit:
            raise RunFailure(
                f"{error}; it died {self.learner_restarts + 1} times, more than "
                f"runtime.learner_max_restarts = {limit} allows"
            ) from None
        self.learner_restarts += 1
        state = read_run_state(self.ckpt)
        report = self.rt.restart_learner(state)
        self.view.print(
            f"{error}; restarted it (restart {self.learner_restarts} of at most {limit}) from "
            + (f"the checkpoint at step {report.steps}" if state else "scratch (no checkpoint)")
        )
        self.steps, self.version, self.updates = report.steps, report.version, report.updates
        self.checkpointed_at = self.steps if state is not None else -1
        self.metrics.rewind(self.steps)
        self.stats.on_restore(self.steps, self.version)
        self.progress_at = time.monotonic()
        self._write_status()

    def _finish_step(self, timeout_s: float) -> None:
        report = self.rt.finish_step(timeout_s)
        if report is not None:
            self._on(StepDone(report))

    # -- events -------------------------------------------------------------------------------
    def _on(self, event: Event) -> None:
        if isinstance(event, StepDone):
            self._on_step(event.report)
        elif isinstance(event, BatchDone):
            self.trajectories += event.report.written
            self.stats.on_batch(event.report)
        elif isinstance(event, ActorStarted):
            self.progress_at = max(self.progress_at, time.monotonic())
            self.stats.on_start(event.actor_id, event.pid, event.version, event.restarts)
            self._write_status()
        elif isinstance(event, ActorFailedEvent):
            self.stats.on_failure(event.actor_id)
            self.view.print(
                f"actor {event.actor_id} failed: {event.error}; restarting in "
                f"{event.restart_in_s:.1f} s"
            )
            self._write_status()
        elif isinstance(event, WeightsApplied):
            self.stats.publish_ms.append(event.latency_ms)

    def _on_step(self, r: StepReport) -> None:
        if not r.stepped:
            self.stats.learner_status = "waiting for replay"
            self.wait_reason = r.reason
            return
        self.progress_at = time.monotonic()
        self.steps, self.version, self.updates = r.steps, r.version, r.updates
        self.stats.on_step(r.steps, r.version, r.staleness, r.metrics.get("replay/size", 0))
        self.stats.learner_wait_share = r.metrics.get("learner/data_wait_share", math.nan)
        self._advise_on_balance()
        self.last = {
            **r.metrics,
            **self.stats.metrics(),
            "actor/trajectories": float(self.trajectories),
            "learner/step_s": r.step_s,
        }
        self.metrics.log(r.steps, self.last)
        if r.steps % self.cfg.learner.checkpoint_every == 0:
            self._checkpoint(self.cfg.runtime.shutdown_timeout_s)

    def _advise_on_balance(self) -> None:
        """Once per run: when the rate limiter holds the actors most of the time, the learner
        is the bottleneck; say so with the settings that help."""
        held = self.stats.actors_held_share()
        if self.balance_advised or self.steps < BALANCE_MIN_STEPS or not held > 0.5:
            return
        self.balance_advised = True
        more = ("add learner workers (learner.num_workers, a divisor of "
                f"learner.minibatch_size = {self.cfg.learner.minibatch_size}), "
                if self.cfg.runtime.kind == "ray" else "")
        self.view.print(
            f"actors were held by the replay's rate limiter {100 * held:.0f}% of the time: the "
            f"learner is the bottleneck. To keep up, {more}lower replay.samples_per_insert "
            f"(now {self.cfg.replay.samples_per_insert:g}), or run fewer actors"
        )

    def _check_stall(self) -> None:
        """Fail with the replay's own explanation instead of waiting forever."""
        idle = time.monotonic() - self.progress_at
        limit = self.cfg.runtime.stall_timeout_s
        if idle > limit:
            raise RunFailure(
                f"no learner step for {idle:.0f} s (runtime.stall_timeout_s = {limit:g}); the "
                f"learner's last wait: {self.wait_reason or 'none'}; actors: "
                f"{self.stats.line().split('|')[-1].strip()}"
            )

    # -- checkpoints and status ---------------------------------------------------------------
    def _checkpoint(self, timeout_s: float | None = None) -> None:
        """Checkpoint and adapter snapshot of the current step (once per step)."""
        if self.checkpointed_at == self.steps:
            return
        try:
            part = self.rt.learner_state(timeout_s)
            packet = self.rt.adapter(timeout_s)
        except RunFailure as e:
            log.error("no checkpoint written: %s", e)
            return
        steps = int(part["learner"]["steps"])
        state = RunState(
            part["learner"], part["replay_limiter"], self.rt.actor_states(), self.trajectories
        )
        save_checkpoint(self.ckpt, state.to_dict())
        save_snapshot(self.run_dir, steps, self.trajectories, packet.state_dict, packet.manifest)
        self.checkpointed_at = steps
        self._write_status()
        self.store.push()  # snapshots and metrics first, then the checkpoint

    def _write_status(self) -> None:
        status = {**self.rt.status(), "steps": self.steps, "version": self.version,
                  "updates": self.updates,
                  "balance": {"actors_held_share": _finite(self.stats.actors_held_share()),
                              "learner_data_wait_share": _finite(self.stats.learner_wait_share)}}
        atomic_write_text(self.run_dir / STATUS, json.dumps(status, indent=1))


def _finite(x: float) -> float | None:
    """JSON has no NaN: None until a share is known."""
    return None if math.isnan(x) else round(x, 4)
