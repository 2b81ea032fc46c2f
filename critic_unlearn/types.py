"""The data that flows between actors, replay and learner.

Frozen dataclasses with shape comments. They hold tensors on the CPU once they leave an actor;
`codec.py` turns them into bytes (safetensors + JSON header) and back, never with pickle.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor

Role = Literal["forget", "retain"]


@dataclass(frozen=True)
class SamplerSettings:
    """How a trajectory was sampled; the learner needs these to re-score its transitions."""

    num_steps: int  # S: denoising steps of the full schedule
    eta: float  # DDIM stochasticity, > 0
    guidance_scale: float  # classifier-free guidance weight w (1.0 = no guidance)
    log_prob_reduction: str = "sum"  # "sum" (true density) or "mean" over latent dims


@dataclass(frozen=True)
class Trajectory:
    """One denoising chain x_T -> x_0 for one prompt, as sampled by an actor.

    The chain has S transitions; position p in 0..S names the state after p steps (p = 0 is x_T,
    p = S is x_0). Only K "kept" transitions are stored (K = S keeps all). `latents` holds every
    state that a kept transition starts or ends in, in ascending position, so keeping all steps
    stores exactly the S + 1 states x_T..x_0, and a random subset costs at most 2K states.
    """

    prompt_id: str
    prompt: str
    role: Role
    latents: Tensor  # (M, C, H, W) states at `positions`
    positions: Tensor  # (M,) int64, ascending schedule positions of the stored states
    steps: Tensor  # (K,) int64, schedule position p of each kept transition (x_p -> x_{p+1})
    timesteps: Tensor  # (K,) the scheduler timestep of each kept transition: DDIM's int64,
    # flow matching's float32 (sigma * 1000)
    log_probs: Tensor  # (K,) float32, behaviour log pi(x_{p+1} | x_p, c) of each kept transition
    reward: float  # terminal reward r(x_0, c); NaN until scored
    version: int  # policy version that sampled it
    actor_id: int
    seed: int
    sampler: SamplerSettings
    image: Tensor | None = field(default=None, compare=False)  # (H, W, 3) uint8, decoded x_0
    # (k, E) float32 soft tokens put after BOS (an adversarial pool prompt), None for plain text:
    # carried so the learner re-scores with exactly the actor's conditioning, pool or no pool
    soft_tokens: Tensor | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        """Unique in a run: an actor never reuses a seed within a policy version."""
        return f"{self.actor_id}:{self.seed}:{self.version}"

    @property
    def num_kept(self) -> int:
        return int(self.steps.shape[0])

    def _index(self, position: Tensor) -> Tensor:
        idx = torch.searchsorted(self.positions, position)
        if not torch.equal(self.positions[idx.clamp(max=len(self.positions) - 1)], position):
            raise ValueError(f"trajectory {self.prompt_id!r} does not store positions {position}")
        return idx

    def transitions(self) -> tuple[Tensor, Tensor]:
        """States before and after each kept transition: two (K, C, H, W) tensors."""
        return self.latents[self._index(self.steps)], self.latents[self._index(self.steps + 1)]

    def with_reward(self, reward: float) -> Trajectory:
        return replace(self, reward=float(reward))


@dataclass(frozen=True)
class Batch:
    """B trajectories stacked for the learner; every trajectory has the same K and shapes."""

    latents: Tensor  # (B, K, C, H, W) x_t before each kept transition
    next_latents: Tensor  # (B, K, C, H, W) x_{t_prev} after it
    timesteps: Tensor  # (B, K) int64 (DDIM) or float32 (flow matching)
    steps: Tensor  # (B, K) int64 schedule positions
    log_probs: Tensor  # (B, K) behaviour log-probs
    rewards: Tensor  # (B,)
    versions: Tensor  # (B,) int64
    prompts: list[str]
    roles: list[Role]
    sampler: SamplerSettings
    # per trajectory its (k, E) soft tokens or None; None here: every prompt is plain text
    soft_tokens: list[Tensor | None] | None = None
    # per trajectory "actor:seed:version", unique in a run: a trajectory drawn twice from the
    # replay enters the reward statistics once; None: every row is a distinct trajectory
    ids: list[str] | None = None

    @staticmethod
    def from_trajectories(trajs: list[Trajectory]) -> Batch:
        if not trajs:
            raise ValueError("cannot build a Batch from zero trajectories")
        settings = {t.sampler for t in trajs}
        if len(settings) != 1:
            raise ValueError(f"trajectories mix sampler settings {settings}; batch them apart")
        before, after = zip(*(t.transitions() for t in trajs), strict=True)
        return Batch(
            latents=torch.stack(before),
            next_latents=torch.stack(after),
            timesteps=torch.stack([t.timesteps for t in trajs]),
            steps=torch.stack([t.steps for t in trajs]),
            log_probs=torch.stack([t.log_probs for t in trajs]),
            rewards=torch.tensor([t.reward for t in trajs], dtype=torch.float32),
            versions=torch.tensor([t.version for t in trajs], dtype=torch.int64),
            prompts=[t.prompt for t in trajs],
            roles=[t.role for t in trajs],
            sampler=trajs[0].sampler,
            soft_tokens=[t.soft_tokens for t in trajs]
            if any(t.soft_tokens is not None for t in trajs)
            else None,
            ids=[t.key for t in trajs],
        )


@dataclass(frozen=True)
class WeightsPacket:
    """A published adapter: version, tensors, and the manifest actors check before applying."""

    version: int
    state_dict: dict[str, Tensor]
    manifest: dict[str, str]  # base_model, lora_config_hash, checksum
    # the adversarial soft-prompt pool (adversarial/pool.py `to_bytes`) that goes with this
    # version, when attack.in_loop_every > 0; actors draw forget prompts from it
    pool: bytes | None = field(default=None, compare=False)
