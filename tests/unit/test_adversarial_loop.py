"""Adversarial prompts in the loop: pool prompts are sampled, stored and re-scored with the same
soft tokens (ratio exactly 1 in fp32, the learner holding no pool), and an actor draws
attack.pool_fraction of its forget prompts from the pool that came with its weights."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from critic_unlearn.actors.actor import Actor, WeightsRefused
from critic_unlearn.adversarial.packets import fold_pool, unfold_pool
from critic_unlearn.adversarial.pool import ID_PREFIX, SoftPromptPool
from critic_unlearn.codec import (
    SOFT_TRAJECTORY_SCHEMA,
    TRAJECTORY_SCHEMA,
    CodecError,
    decode_trajectory,
    encode_trajectory,
)
from critic_unlearn.config import load_config
from critic_unlearn.diffusion.loading import load_components
from critic_unlearn.diffusion.policy import encode_prompts
from critic_unlearn.diffusion.sampling import PromptSpec, sample_trajectories
from critic_unlearn.replay import decode_packet, encode_packet
from critic_unlearn.rewards import build_reward
from critic_unlearn.rewards.prompts import load_prompts
from critic_unlearn.types import Batch, SamplerSettings, WeightsPacket
from tests.unit.test_precision import actor_and_learner, assert_fp32_ratio_is_one, rescore


def soft_vectors(components, k: int = 2, seed: int = 0) -> torch.Tensor:
    width = components.text_encoder.get_input_embeddings().embedding_dim
    return torch.randn(k, width, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_pool_prompt_through_the_codec_is_rescored_with_ratio_one(tiny_model_dir):
    cfg, actor, learner = actor_and_learner(tiny_model_dir, "float32")
    pool = SoftPromptPool(4)
    red = pool.add("a red circle", soft_vectors(actor, seed=1))
    square = pool.add("a red square", soft_vectors(actor, seed=2))
    specs = [
        PromptSpec(red.id, red.text, "forget", red.vectors),
        PromptSpec("forget-x", "a red circle", "forget"),  # same text, no soft tokens
        PromptSpec(square.id, square.text, "forget", square.vectors),
        PromptSpec("retain-y", "a blue square", "retain"),
    ]
    s = cfg.sampler
    settings = SamplerSettings(s.num_steps, s.eta, s.guidance_scale, s.log_prob_reduction)
    trajs = sample_trajectories(actor, specs, [0, 1, 2, 3], settings, decode=False)
    blobs = [encode_trajectory(t.with_reward(0.0)) for t in trajs]
    assert [SOFT_TRAJECTORY_SCHEMA.encode() in b[:2000] for b in blobs] == [True, False] * 2
    back = [decode_trajectory(b) for b in blobs]
    assert torch.equal(back[0].soft_tokens, red.vectors) and back[1].soft_tokens is None
    batch = Batch.from_trajectories(back)
    del pool  # the learner re-scores from what the trajectories carry

    learner.c.scheduler.set_timesteps(s.num_steps, device=learner.device)
    cond = learner.conditioning(batch)
    assert_fp32_ratio_is_one(
        batch, rescore(learner, batch, cond, "actor"), rescore(learner, batch, cond, "training")
    )

    # the soft tokens matter: the same chain re-scored as plain text is another policy
    plain = encode_prompts(learner.c.tokenizer, learner.c.text_encoder, batch.prompts)
    assert not torch.equal(plain[0], cond[0]) and torch.equal(plain[1], cond[1])
    as_text = learner._score(batch.latents[:1, 0], batch.next_latents[:1, 0],
                             batch.timesteps[:1, 0], plain[:1], batch)
    assert as_text.log_prob.item() != batch.log_probs[0, 0].item()


def test_soft_trajectory_schema_is_checked() -> None:
    from tests.integration.conftest import make_trajectory

    plain = make_trajectory(0)
    blob = encode_trajectory(plain)
    assert TRAJECTORY_SCHEMA.encode() in blob[:2000]  # plain records stay readable by old code
    assert decode_trajectory(blob).soft_tokens is None
    soft = replace(plain, soft_tokens=torch.ones(3, 8))
    assert torch.equal(decode_trajectory(encode_trajectory(soft)).soft_tokens, torch.ones(3, 8))
    with pytest.raises(CodecError, match="soft tokens"):  # the conditioning is float32 (k, E)
        decode_trajectory(encode_trajectory(replace(plain, soft_tokens=torch.ones(3, 8).double())))
    with pytest.raises(CodecError, match="soft tokens"):
        decode_trajectory(encode_trajectory(replace(plain, soft_tokens=torch.ones(8))))


def make_actor(model_dir, clip_dir, *extra) -> Actor:
    cfg = load_config(None, [
        f"model.pretrained={model_dir}", f"reward.clip_model={clip_dir}",
        "reward.prompts.forget=[a red circle, a red square]",
        "reward.prompts.retain=[a blue circle, a blue square]",
        "reward.prompts.concept=red", "reward.prompts.anchor=a shape",
        "sampler.num_steps=2", "sampler.batch_size=8", "attack.pool_fraction=0.5", *extra])
    return Actor(cfg, 0, load_components(str(model_dir)), build_reward(cfg.reward),
                 load_prompts(cfg.reward.prompts), forget_fraction=0.5)


def packet_with_pool(learner_actor: Actor, pool: SoftPromptPool | None, version: int):
    """What a learner publishes, through the Ray route's blob (fold, encode, decode, unfold)."""
    from critic_unlearn.diffusion.lora import adapter_manifest, get_adapter_state

    state = get_adapter_state(learner_actor.c.unet)
    manifest = adapter_manifest(learner_actor.c.model_id, learner_actor.lora_hash, state, version)
    packet = WeightsPacket(version, state, manifest, None if pool is None else pool.to_bytes())
    return unfold_pool(decode_packet(encode_packet(fold_pool(packet))))


def test_actor_draws_the_pool_fraction_of_its_forget_share(tiny_model_dir, clip_dir):
    actor = make_actor(tiny_model_dir, clip_dir)
    twin = make_actor(tiny_model_dir, clip_dir)  # never sees a pool: the plain draws
    plain = [(p.prompt_id, p.role) for p in twin._draw_prompts(8)]
    assert [(p.prompt_id, p.role) for p in actor._draw_prompts(8)] == plain

    actor.apply_weights(packet_with_pool(actor, SoftPromptPool(3), 1))  # empty pool: none
    assert actor.soft_pool is not None and len(actor.soft_pool) == 0
    assert [(p.prompt_id, p.role) for p in actor._draw_prompts(8)] == [
        (p.prompt_id, p.role) for p in twin._draw_prompts(8)]

    pool = SoftPromptPool(3)
    entries = [pool.add("a red circle", soft_vectors(actor.c, seed=i)) for i in range(2)]
    actor.apply_weights(packet_with_pool(actor, pool, 2))
    specs = actor._draw_prompts(8)
    roles = [p.role for p in specs]
    assert roles.count("forget") == 4 and roles.count("retain") == 4  # forget_fraction 0.5
    soft = [p for p in specs if p.prompt_id.startswith(ID_PREFIX)]
    assert len(soft) == 2 and all(p.role == "forget" for p in soft)  # 0.5 of the 4 forget
    by_id = {e.id: e for e in entries}
    assert all(torch.equal(p.soft_tokens, by_id[p.prompt_id].vectors) for p in soft)
    assert all(p.soft_tokens is None for p in specs if p not in soft)

    trajs = actor.sample_batch(8)  # stored with their tokens, scored by text like forget ones
    kept = [t for t in trajs if t.prompt_id.startswith(ID_PREFIX)]
    assert len(kept) == 2 and all(t.soft_tokens is not None and t.reward == t.reward
                                  for t in kept)

    # a later packet without a pool (attack off) keeps it; a tampered pool is refused whole
    actor.apply_weights(packet_with_pool(actor, None, 3))
    assert len(actor.soft_pool) == 2
    bad = packet_with_pool(actor, pool, 4)
    blob = bytearray(bad.pool)
    blob[-1] ^= 1
    with pytest.raises(WeightsRefused, match="soft-prompt pool"):
        actor.apply_weights(WeightsPacket(4, bad.state_dict, bad.manifest, bytes(blob)))
    assert actor.version == 3 and len(actor.soft_pool) == 2


def test_pool_fraction_one_takes_every_forget_prompt_from_the_pool(tiny_model_dir, clip_dir):
    actor = make_actor(tiny_model_dir, clip_dir, "attack.pool_fraction=1.0")
    pool = SoftPromptPool(2)
    pool.add("a red square", soft_vectors(actor.c))
    actor.apply_weights(packet_with_pool(actor, pool, 1))
    specs = actor._draw_prompts(6)
    assert [p.prompt_id.startswith(ID_PREFIX) for p in specs if p.role == "forget"] == [True] * 3
