"""What the run loop knows about the run, as metrics and as one progress display.

`RunStats` is fed every actor batch, learner step, actor (re)start and weight acknowledgement;
`metrics()` adds the runtime's keys to a learner step's metrics (per-actor rates, restarts,
publish latency, staleness). `ProgressView` shows it, the same in both runtimes: a live table on
a terminal, one plain line every `runtime.progress_every_s` otherwise (`ray job logs`).
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from critic_unlearn.training.reports import BatchReport

WINDOW_S = 30.0  # seconds of history behind every rate


class Rate:
    """Events per second over the last WINDOW_S seconds (or since creation, if shorter)."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.events: deque[tuple[float, int]] = deque()

    def add(self, n: int) -> None:
        self.events.append((time.monotonic(), n))

    def per_s(self) -> float:
        now = time.monotonic()
        while self.events and now - self.events[0][0] > WINDOW_S:
            self.events.popleft()
        span = max(min(now - self.start, WINDOW_S), 1.0)
        return sum(n for _, n in self.events) / span


@dataclass
class ActorView:
    trajectories: int = 0
    version: int = 0
    restarts: int = 0
    pid: int | None = None
    status: str = "starting"
    rate: Rate = field(default_factory=Rate)


class RunStats:
    def __init__(
        self,
        n_actors: int,
        capacity: int,
        max_steps: int,
        trajectories: int = 0,
        steps: int = 0,
        version: int = 0,
    ) -> None:
        self.t0 = time.monotonic()
        self.actors = {i: ActorView() for i in range(n_actors)}
        self.capacity, self.max_steps = capacity, max_steps
        self.trajectories, self.steps, self.version = trajectories, steps, version
        self.traj_rate, self.step_rate = Rate(), Rate()
        self.recent: deque[BatchReport] = deque(maxlen=16)
        self.staleness: Counter[int] = Counter()
        self.publish_ms: deque[float] = deque(maxlen=50)
        self.replay_size = 0
        self.learner_status = "starting"
        self.actor_held_s = self.actor_busy_s = 0.0  # limiter waits, all batch time (actors)
        self.learner_wait_share = math.nan  # the learner's share of time waiting for data

    # -- feeding ------------------------------------------------------------------------------
    def on_batch(self, r: BatchReport) -> None:
        a = self.actors[r.actor_id]
        a.trajectories += r.written
        a.version, a.status = r.version, "blocked" if r.blocked else "sampling"
        a.rate.add(r.written)
        self.traj_rate.add(r.written)
        self.actor_held_s += r.held_s
        self.actor_busy_s += r.held_s + r.sample_s + r.write_s
        self.trajectories += r.written
        if r.written:
            self.recent.append(r)

    def on_start(self, actor_id: int, pid: int, version: int, restarts: int) -> None:
        a = self.actors[actor_id]
        a.pid, a.version, a.status, a.restarts = pid, version, "sampling", restarts

    def on_failure(self, actor_id: int) -> None:
        a = self.actors[actor_id]
        a.status, a.pid = "restarting", None

    def on_restore(self, steps: int, version: int) -> None:
        """A restarted learner went back to a checkpoint."""
        self.steps, self.version = steps, version
        self.learner_status = "restored"

    def on_step(
        self, steps: int, version: int, staleness: dict[int, int], replay_size: float
    ) -> None:
        self.step_rate.add(steps - self.steps)
        self.steps, self.version = steps, version
        self.staleness.update(staleness)
        self.replay_size = int(replay_size)
        self.learner_status = "stepping"

    # -- derived ------------------------------------------------------------------------------
    def reward_mean(self) -> float:
        n = sum(r.written for r in self.recent)
        return sum(r.reward_sum for r in self.recent) / n if n else math.nan

    def forget_reward_mean(self) -> float:
        n = sum(r.forget for r in self.recent)
        return sum(r.forget_reward_sum for r in self.recent) / n if n else math.nan

    def ua_proxy(self) -> float:
        n = sum(r.forget for r in self.recent)
        return sum(r.forget_positive for r in self.recent) / n if n else math.nan

    def actors_held_share(self) -> float:
        """Share of the actors' time the rate limiter held them (the learner is behind)."""
        return self.actor_held_s / self.actor_busy_s if self.actor_busy_s > 0 else math.nan

    def balance_text(self) -> str:
        return (f"actors held {100 * self.actors_held_share():.0f}%, learner waits "
                f"{100 * self.learner_wait_share:.0f}%")

    def publish_p50(self) -> float:
        return statistics.median(self.publish_ms) if self.publish_ms else math.nan

    def metrics(self) -> dict[str, float]:
        """Runtime keys logged beside every learner step's metrics."""
        out = {
            "actor/trajectories": float(self.trajectories),
            "actor/reward_mean": self.reward_mean(),
            "actor/forget_reward_mean": self.forget_reward_mean(),
            "actor/ua_proxy": self.ua_proxy(),
            "actor/trajectories_per_s": self.traj_rate.per_s(),
            "actor/restarts": float(sum(a.restarts for a in self.actors.values())),
            "learner/steps_per_s": self.step_rate.per_s(),
            "learner/staleness_max": float(max(self.staleness, default=0)),
            "replay/fill": self.replay_size / self.capacity,
            "runtime/actors_held_share": self.actors_held_share(),
            "runtime/publish_to_applied_ms": self.publish_ms[-1] if self.publish_ms else math.nan,
        }
        for i, a in self.actors.items():
            out[f"actor/{i}/trajectories_per_s"] = a.rate.per_s()
            out[f"actor/{i}/version"] = float(a.version)
            out[f"actor/{i}/trajectories"] = float(a.trajectories)
        return out

    def staleness_text(self) -> str:
        total = sum(self.staleness.values())
        if not total:
            return "-"
        return " ".join(f"{k}:{100 * v / total:.0f}%" for k, v in sorted(self.staleness.items()))

    def line(self) -> str:
        """The whole state in one line (logs, `ray job logs`)."""
        actors = ", ".join(
            f"a{i} {a.rate.per_s():.2f}/s v{a.version} {a.status}"
            + (f" r{a.restarts}" if a.restarts else "")
            for i, a in self.actors.items()
        )
        return (
            f"progress: step {self.steps}/{self.max_steps} v{self.version} | "
            f"{self.step_rate.per_s():.2f} steps/s | traj {self.trajectories} "
            f"({self.traj_rate.per_s():.2f}/s) | replay {self.replay_size}/{self.capacity} | "
            f"staleness {self.staleness_text()} | publish p50 {self.publish_p50():.0f} ms | "
            f"reward {self.reward_mean():.3f} | UA proxy {self.ua_proxy():.2f} | "
            f"{self.balance_text()} | {actors}"
        )

    def table(self) -> Group:
        head = Table.grid(padding=(0, 2))
        elapsed = time.monotonic() - self.t0
        head.add_row(
            f"[bold]learner[/] step {self.steps}/{self.max_steps}  v{self.version}  "
            f"{self.step_rate.per_s():.2f} steps/s  ({self.learner_status})",
            f"elapsed {elapsed:.0f} s",
        )
        head.add_row(
            f"[bold]replay[/] {self.replay_size}/{self.capacity}  staleness "
            f"{self.staleness_text()}",
            f"publish->applied p50 {self.publish_p50():.0f} ms",
        )
        head.add_row(f"[bold]balance[/] {self.balance_text()}", "")
        head.add_row(
            f"[bold]reward[/] {self.reward_mean():.3f}  UA proxy {self.ua_proxy():.2f}",
            f"trajectories {self.trajectories} ({self.traj_rate.per_s():.2f}/s)",
        )
        t = Table("actor", "pid", "status", "version", "trajectories", "traj/s", "restarts")
        for i, a in self.actors.items():
            t.add_row(
                str(i),
                str(a.pid or "-"),
                a.status,
                f"v{a.version}",
                str(a.trajectories),
                f"{a.rate.per_s():.2f}",
                str(a.restarts),
            )
        return Group(head, t)


class ProgressView:
    """Live table on a terminal; periodic plain lines otherwise."""

    def __init__(self, stats: RunStats, console: Console, every_s: float) -> None:
        self.stats, self.console, self.every_s = stats, console, every_s
        self.live = (
            Live(
                stats.table(),
                console=console,
                refresh_per_second=2,
                transient=False,
                auto_refresh=False,
            )
            if console.is_terminal
            else None
        )
        self.last_line = 0.0

    def __enter__(self) -> ProgressView:
        if self.live is not None:
            self.live.start()
        return self

    def refresh(self, force: bool = False) -> None:
        if self.live is not None:
            self.live.update(self.stats.table(), refresh=True)
            return
        now = time.monotonic()
        if force or now - self.last_line >= self.every_s:
            self.last_line = now
            self.console.print(self.stats.line(), highlight=False, soft_wrap=True)

    def print(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.update(self.stats.table(), refresh=True)
            self.live.stop()
        else:
            self.refresh(force=True)
