"""Adversarial prompts in the training loop: attack the current adapter, refill the pool.

The learner worker calls `refresh_pool` every `attack.in_loop_every` policy versions, after the
step, with the learner's UNet (current adapter loaded). One set of soft tokens is learned against it
for all forget prompts (`attack.in_loop_steps` Adam steps, default `attack.steps` as in
`critic-unlearn attack`) and added to the pool once per forget prompt; actors then draw
`attack.pool_fraction` of their forget prompts from the pool. With `attack.in_loop_warm_start` each
attack starts from the newest pool entry's tokens, which worked against the adapter of N steps ago,
instead of from the concept words: the attacker keeps its progress from one call to the next (as
"free" adversarial training reuses its perturbation across minibatches), so fewer steps per call
reach as far.

`PoolPublisher` sits between the learner and the worker's publisher, so that the pool goes out
with the very version it was found against, in the same packet (`WeightsPacket.pool`).
"""

from __future__ import annotations

import time
from dataclasses import replace

from critic_unlearn.adversarial.learn import attack_settings, class_texts, learn_prompt
from critic_unlearn.adversarial.pool import SoftPromptPool
from critic_unlearn.config import RunConfig
from critic_unlearn.diffusion.loading import SDComponents
from critic_unlearn.learner.publisher import Published, Publisher
from critic_unlearn.rewards.openclip_loading import LoadedClip
from critic_unlearn.rewards.prompts import load_prompts
from critic_unlearn.types import WeightsPacket


def refresh_pool(pool: SoftPromptPool, comps: SDComponents, clip: LoadedClip, cfg: RunConfig,
                 step: int) -> dict[str, float]:
    """Learn tokens against the UNet as it is now, add them; returns metrics (cost included)."""
    t0 = time.perf_counter()
    texts = [p.text for p in load_prompts(cfg.reward.prompts).forget]
    s = attack_settings(cfg)
    a = cfg.attack
    s = type(s)(**{**s.__dict__, "seed": a.seed * 7_919 + step,  # fresh seeds per call
                   "steps": a.in_loop_steps or a.steps})
    newest = pool.prompts[-1].vectors if a.in_loop_warm_start and len(pool) else None
    found = learn_prompt(comps, clip, texts, [class_texts(t, cfg) for t in texts],
                         cfg.reward.prompts.concept, s, start=newest)
    for text in texts:
        pool.add(text, found.vectors)
    return {"adversarial/attack_s": round(time.perf_counter() - t0, 3),
            "adversarial/concept_prob": found.concept_prob[-1],
            "adversarial/attack_steps": float(s.steps),
            "adversarial/pool": float(len(pool))}


class PoolPublisher:
    """Between the learner and the real publisher when the attack runs in the loop: a version
    the learner publishes is held until the worker has (maybe) refreshed the pool, then goes
    out with the pool's bytes, so a pool always travels with the adapter it was found against."""

    def __init__(self, inner: Publisher, pool: SoftPromptPool) -> None:
        self.inner, self.pool = inner, pool
        self.held: WeightsPacket | None = None

    def publish(self, packet: WeightsPacket) -> None:
        self.held = packet

    def flush(self, packet: WeightsPacket | None = None) -> None:
        """Publish the held version (or `packet`) with the pool as it is now."""
        packet, self.held = packet or self.held, None
        if packet is not None:
            self.inner.publish(replace(packet, pool=self.pool.to_bytes()))

    def take_new(self) -> Published | None:
        return self.inner.take_new()
