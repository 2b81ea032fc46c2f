"""What the actor and learner workers tell the run loop, as small typed records.

The loop (training/loop.py) sees a run only through these: a learner step (`StepReport`), an actor
batch (`BatchReport`), a published adapter version (`Published`, defined beside the learner's
`Publisher` protocol), and the events a runtime turns its calls' results into (`ActorStarted`,
`ActorFailedEvent`, `WeightsApplied`, `StepDone`, `BatchDone`). Both runtimes produce the same
records, so the loop is written once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from critic_unlearn.learner.publisher import Published
from critic_unlearn.types import Trajectory


def forget_rewards(trajs: Sequence[Trajectory]) -> list[float]:
    return [t.reward for t in trajs if t.role == "forget"]


def ua_proxy(trajs: Sequence[Trajectory]) -> float:
    """Share of forget trajectories with positive reward: for clip_concept with alpha = 1 that is
    'the reward CLIP finds the anchor closer than the concept'. A proxy, not the judge's UA."""
    forget = forget_rewards(trajs)
    return sum(r > 0 for r in forget) / len(forget) if forget else float("nan")


@dataclass(frozen=True)
class StepReport:
    """One `try_step`: a learner step, or a wait the replay imposed (reason says why)."""

    stepped: bool
    steps: int
    version: int
    metrics: dict[str, float] = field(default_factory=dict)
    staleness: dict[int, int] = field(default_factory=dict)  # versions behind -> records
    published: Published | None = None
    step_s: float = 0.0
    reason: str = ""
    updates: int = 0  # policy updates (the budget); `version` labels the weights


@dataclass(frozen=True)
class BatchReport:
    """What one actor batch did; the loop's only view of an actor's progress."""

    actor_id: int
    written: int  # trajectories stored in the replay
    sampled: int  # trajectories sampled (more than written if the limiter held a write)
    version: int  # policy version that sampled them
    reward_sum: float  # over the written ones
    forget: int  # forget-role trajectories written
    forget_positive: int  # ... with positive reward (the UA proxy's numerator)
    forget_reward_sum: float  # their rewards' sum (the forget reward curve)
    sample_s: float  # sampling + scoring
    write_s: float  # replay writes, including rate-limiter waits
    blocked: bool  # the rate limiter gave no room (nothing sampled) or held a write too long
    next_seed: int  # actor state after this batch (goes into checkpoints)
    rng: torch.Tensor  # uint8 generator state after this batch
    held_s: float = 0.0  # waiting for room in the replay (the rate limiter held this actor)

    def actor_state(self) -> dict[str, Any]:
        """The actor's part of a checkpoint after this batch."""
        return {"next_seed": self.next_seed, "rng": self.rng}


# -- events: what a runtime's `poll` returns ----------------------------------------------------
@dataclass(frozen=True)
class StepDone:
    report: StepReport


@dataclass(frozen=True)
class BatchDone:
    report: BatchReport


@dataclass(frozen=True)
class ActorStarted:
    actor_id: int
    pid: int
    version: int
    restarts: int


@dataclass(frozen=True)
class ActorFailedEvent:
    actor_id: int
    error: str  # one line: the original exception
    restart_in_s: float


@dataclass(frozen=True)
class WeightsApplied:
    """Every live actor acknowledged `version`; `latency_ms` from publish to the last ack."""

    version: int
    latency_ms: float


Event = StepDone | BatchDone | ActorStarted | ActorFailedEvent | WeightsApplied
