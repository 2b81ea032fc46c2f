"""One actor's work, the same in one process and under Ray (the runtime only wraps it).

Weights change only between batches (`apply_weights`), so every trajectory is sampled by exactly
one policy version and carries it. A packet for another base model or LoRA shape, or one whose
bytes do not match its checksum, is refused and the actor keeps its current weights.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from critic_unlearn.adversarial.pool import SoftPromptPool
from critic_unlearn.codec import CodecError
from critic_unlearn.config import RunConfig
from critic_unlearn.diffusion.contract import Policy
from critic_unlearn.diffusion.lora import (
    adapter_manifest,
    attach_lora,
    lora_config_hash,
    set_adapter_state,
)
from critic_unlearn.diffusion.sampling import PromptSpec, sample_trajectories
from critic_unlearn.rewards import RewardModel
from critic_unlearn.rewards.prompts import PromptSet
from critic_unlearn.types import SamplerSettings, Trajectory, WeightsPacket

log = logging.getLogger(__name__)


class WeightsRefused(ValueError):
    """A weights packet that does not fit this actor's model (kept the old weights)."""


@dataclass
class ActorStats:
    batches: int = 0
    trajectories: int = 0
    sample_s: float = 0.0
    reward_s: float = 0.0
    refused_weights: int = 0


class Actor:
    """Samples scored trajectories with the current adapter; `forget_fraction` of each batch
    uses forget prompts, the rest retain prompts. With adversarial prompts in the loop, the pool
    that came with the weights supplies `attack.pool_fraction` of the forget prompts."""

    def __init__(
        self,
        cfg: RunConfig,
        actor_id: int,
        components: Policy,
        reward: RewardModel,
        prompts: PromptSet,
        forget_fraction: float = 0.5,
    ) -> None:
        self.cfg, self.actor_id, self.c = cfg, actor_id, components
        self.reward, self.prompts = reward, prompts
        if not any("lora_" in n for n, _ in components.denoiser.named_parameters()):
            attach_lora(components.denoiser, cfg.lora)
        self.lora_hash = lora_config_hash(cfg.lora)
        self.version = 0
        self.forget_fraction = forget_fraction
        self.rng = torch.Generator().manual_seed(cfg.runtime.seed * 1_000_003 + actor_id)
        self.next_seed = (cfg.runtime.seed * 1000 + actor_id) << 32  # disjoint per actor
        s = cfg.sampler
        self.settings = SamplerSettings(s.num_steps, s.eta, s.guidance_scale, s.log_prob_reduction)
        self.stats = ActorStats()
        self.soft_pool: SoftPromptPool | None = None  # from the learner, with the weights

    def apply_weights(self, packet: WeightsPacket) -> None:
        """Switch to `packet`'s adapter, or raise WeightsRefused and keep the current one."""
        m = packet.manifest
        problem = None
        if m.get("base_model") != self.c.model_id:
            problem = f"base model {m.get('base_model')!r} is not this actor's {self.c.model_id!r}"
        elif m.get("lora_config_hash") != self.lora_hash:
            problem = (
                f"LoRA config {m.get('lora_config_hash')} is not this actor's {self.lora_hash}"
            )
        else:
            expected = adapter_manifest(
                self.c.model_id, self.lora_hash, packet.state_dict, packet.version
            )["checksum"]
            if m.get("checksum") != expected:
                problem = "adapter bytes do not match the manifest's checksum"
        pool = None
        if not problem and packet.pool is not None:
            try:
                pool = SoftPromptPool.from_bytes(packet.pool)
            except CodecError as e:
                problem = f"its soft-prompt pool is unreadable ({e})"
        if problem:
            self.stats.refused_weights += 1
            raise WeightsRefused(
                f"actor {self.actor_id} refused weights v{packet.version}: {problem}"
            )
        dev = self.c.device
        set_adapter_state(self.c.denoiser, {k: v.to(dev) for k, v in packet.state_dict.items()})
        self.version = packet.version
        if pool is not None:  # a packet without one (in-loop attack off) keeps the pool
            self.soft_pool = pool

    def _draw_prompts(self, n: int) -> list[PromptSpec]:
        """Forget then retain prompts; of the forget ones, round(attack.pool_fraction * share)
        come from the soft-prompt pool (role forget, scored by their text), none while the pool
        is empty. Without a pool the draws are those of a run without the attack."""
        n_forget = round(n * self.forget_fraction) if self.prompts.retain else n
        n_pool = 0
        if self.soft_pool is not None and len(self.soft_pool):
            n_pool = round(self.cfg.attack.pool_fraction * n_forget)
        picks = []
        for role, pool, count in (
            ("forget", self.prompts.forget, n_forget - n_pool),
            ("retain", self.prompts.retain, n - n_forget),
        ):
            for i in (
                torch.randint(len(pool), (count,), generator=self.rng).tolist() if count else []
            ):
                picks.append(PromptSpec(pool[i].id, pool[i].text, role))
        if n_pool:
            for entry in self.soft_pool.sample(n_pool, self.rng):  # type: ignore[union-attr]
                picks.append(PromptSpec(entry.id, entry.text, "forget", entry.vectors))
        return picks

    def sample_batch(self, n: int | None = None) -> list[Trajectory]:
        """n (default sampler.batch_size) scored trajectories of the current policy version."""
        n = n or self.cfg.sampler.batch_size
        specs = self._draw_prompts(n)
        seeds = list(range(self.next_seed, self.next_seed + n))
        self.next_seed += n
        t0 = time.perf_counter()
        s = self.cfg.sampler
        trajs = sample_trajectories(
            self.c,
            specs,
            seeds,
            self.settings,
            keep_steps=s.keep_steps,
            sde_window=s.sde_window,
            height=s.height,
            width=s.width,
            version=self.version,
            actor_id=self.actor_id,
        )
        t1 = time.perf_counter()
        images = torch.stack([t.image for t in trajs])
        rewards = self.reward(images, [t.prompt for t in trajs], [t.role for t in trajs])
        t2 = time.perf_counter()
        self.stats.batches += 1
        self.stats.trajectories += n
        self.stats.sample_s += t1 - t0
        self.stats.reward_s += t2 - t1
        return [t.with_reward(float(r)) for t, r in zip(trajs, rewards.tolist(), strict=True)]
