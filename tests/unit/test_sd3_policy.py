"""The SD3-class policy behind the contract: stock-pipeline parity, exact re-scoring, loading,
and the learner training it (a tiny random SD3 pipeline saved and loaded back)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from critic_unlearn.config import load_config
from critic_unlearn.diffusion.backbones import load_policy
from critic_unlearn.diffusion.contract import POLICY_SETTINGS, ModelLoadError
from critic_unlearn.diffusion.loading import SDComponents
from critic_unlearn.diffusion.sampling import PromptSpec, sample_trajectories
from critic_unlearn.diffusion.sd3 import SD3Policy, pack, unpack
from critic_unlearn.learner.critic import build_critic, text_embedder
from critic_unlearn.learner.learner import Learner
from critic_unlearn.types import Batch, SamplerSettings
from tests.unit._clip_fixtures import tiny_clip


@pytest.fixture(scope="module")
def sd3(tiny_sd3_dir) -> SD3Policy:
    return load_policy(str(tiny_sd3_dir))


def test_load_policy_picks_the_family_from_the_folder(tiny_sd3_dir, tiny_model_dir, sd3):
    assert isinstance(sd3, SD3Policy) and sd3.family == "sd3"
    assert sd3.export_prefix == "transformer" and sd3.latent_shape() == (16, 8, 8)
    assert isinstance(load_policy(str(tiny_model_dir)), SDComponents)
    assert all(not p.requires_grad for p in sd3.denoiser.parameters())


def test_an_unknown_pipeline_or_a_missing_part_is_a_clear_error(tiny_sd3_dir, tmp_path):
    broken = tmp_path / "flux"
    shutil.copytree(tiny_sd3_dir, broken)
    index = json.loads((broken / "model_index.json").read_text())
    (broken / "model_index.json").write_text(json.dumps({**index, "_class_name": "FooPipeline"}))
    with pytest.raises(ModelLoadError, match="FooPipeline.*StableDiffusion3Pipeline"):
        load_policy(str(broken))
    (broken / "model_index.json").write_text(json.dumps(index))
    shutil.rmtree(broken / "transformer")
    with pytest.raises(ModelLoadError, match="lacks transformer.*StableDiffusion3Pipeline"):
        load_policy(str(broken))


def test_pack_keeps_the_tokens_and_the_pooled_embedding(sd3):
    embeds, pooled = torch.randn(3, 5, 64), torch.randn(3, 64)
    got_e, got_p = unpack(pack(embeds, pooled), 64)
    assert torch.equal(got_e, embeds) and torch.equal(got_p, pooled)
    short_e, short_p = unpack(pack(embeds, pooled[:, :40]), 40)
    assert torch.equal(short_p, pooled[:, :40])


def test_the_noiseless_chain_is_the_stock_pipeline(sd3):
    """eta (the SDE's noise level) = 0: our guided steps reproduce StableDiffusion3Pipeline's
    own sampling loop, prompt encoding and CFG included, bit for bit in fp32."""
    x = sd3.initial_noise(sd3.latent_shape(), [torch.Generator().manual_seed(5)])
    cond, uncond = sd3.encode(["a red circle"]), sd3.empty_condition()
    y = x
    for t in sd3.set_timesteps(4):
        out = sd3.step(y, t, cond, uncond, guidance_scale=4.5, eta=0.0)
        assert float(out.std.max()) == 0.0 and torch.equal(out.log_prob, torch.zeros(1))
        y = out.prev_sample
    ref = sd3.pipe(prompt="a red circle", latents=x.clone(), num_inference_steps=4,
                   guidance_scale=4.5, output_type="latent").images
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-6)


def test_a_fresh_batch_rescores_to_ratio_one(sd3):
    """Sampled with noise (eta 0.7) in the actor's batch, re-scored step by step in the same
    shapes: the same log-probs exactly, so the PPO ratio of a fresh batch is 1."""
    specs = [PromptSpec("p0", "a red circle", "forget"), PromptSpec("p1", "a blue square")]
    trajs = sample_trajectories(sd3, specs, [1, 2], SamplerSettings(4, 0.7, 4.5, "sum"),
                                decode=False)
    b = Batch.from_trajectories([t.with_reward(0.0) for t in trajs])
    assert b.timesteps.dtype == torch.float32  # flow timesteps are sigma * 1000, not integers
    sd3.set_timesteps(4)
    cond = sd3.encode(b.prompts)
    uncond = sd3.empty_condition().expand_as(cond)
    for j in range(b.timesteps.shape[1]):
        out = sd3.step(b.latents[:, j], b.timesteps[:, j], cond, uncond, guidance_scale=4.5,
                       eta=0.7, prev_sample=b.next_latents[:, j])
        assert torch.equal(out.log_prob, b.log_probs[:, j])
    std = sd3.step_std(b.timesteps, 0.7)
    assert std.shape == b.timesteps.shape and bool((std > 0).all())


@pytest.mark.parametrize("critic_input", ["noisy", "latent"])
def test_the_learner_trains_the_sd3_transformer_with_a_critic(tiny_sd3_dir, tmp_path,
                                                              critic_input):
    """Two PPO steps with the critic on decoded flow states, or on the 16-channel latents with
    no decode (DPOK's choice): LoRA on the transformer moves."""
    cfg = load_config(None, [f"critic.input={critic_input}", "critic.latent_channels=16",
        f"model.pretrained={tiny_sd3_dir}", "sampler.num_steps=4", "sampler.eta=0.7",
        "sampler.guidance_scale=4.5", "learner.batch_size=2", "learner.minibatch_size=2",
        "learner.train_steps=2", "learner.lr=1e-2", "critic.warmup_steps=0",
        "critic.hidden=16", "critic.timestep_dim=16", "critic.reward_feature=false",
    ])
    policy = load_policy(cfg.model)
    clip = tiny_clip(tmp_path / "clip")
    critic = build_critic(cfg.critic, clip)
    learner = Learner(cfg, policy, critic, text_embedder(clip, cfg.critic))
    before = {k: v.clone() for k, v in learner.weights().state_dict.items()}
    # the MMDiT's attention projections, image and text streams (to_q / to_k / to_v / to_out.0)
    assert before and all(k.startswith("transformer_blocks.0.attn.") for k in before)
    specs = [PromptSpec("p0", "a red circle", "forget"), PromptSpec("p1", "a blue square")]
    for step in range(2):
        trajs = sample_trajectories(policy, specs, [10 + step, 20 + step],
                                    SamplerSettings(4, 0.7, 4.5, "sum"), decode=False,
                                    version=learner.version)
        batch = Batch.from_trajectories([t.with_reward(float(i)) for i, t in enumerate(trajs)])
        metrics = learner.step(batch)
        assert torch.isfinite(torch.tensor(metrics["policy/loss"]))
    assert learner.version == 2
    after = learner.weights().state_dict
    assert any(not torch.equal(after[k], before[k]) for k in before)


@torch.no_grad()
def transformer_output(transformer, seed: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = transformer.config
    x = torch.randn(2, c.in_channels, c.sample_size, c.sample_size, generator=g)
    text = torch.randn(2, 9, c.joint_attention_dim, generator=g)
    pooled = torch.randn(2, c.pooled_projection_dim, generator=g)
    return transformer(hidden_states=x, timestep=torch.tensor([1000.0, 250.0]),
                       encoder_hidden_states=text, pooled_projections=pooled).sample


def test_the_exported_lora_loads_into_the_stock_sd3_pipeline(tiny_sd3_dir, tmp_path):
    """Our adapter, exported as a run leaves it: StableDiffusion3Pipeline.load_lora_weights and
    the merged pipeline reproduce our adapted transformer at fp32 (atol 1e-5)."""
    from diffusers import StableDiffusion3Pipeline
    from safetensors import safe_open

    from critic_unlearn.config import dump_config
    from critic_unlearn.diffusion.lora import (
        adapter_manifest,
        attach_lora,
        get_adapter_state,
        lora_config_hash,
        set_adapter_state,
    )
    from critic_unlearn.export import DIFFUSERS_WEIGHTS, export_run
    from critic_unlearn.training.loop import export_adapter
    from critic_unlearn.types import WeightsPacket

    run = tmp_path / "run"
    run.mkdir()
    base_dir = tmp_path / "base"  # with policy settings, which a merged export must carry
    shutil.copytree(tiny_sd3_dir, base_dir)
    (base_dir / POLICY_SETTINGS).write_text(json.dumps({"max_sequence_length": 256}))
    cfg = load_config(None, [f"model.pretrained={base_dir}", "lora.rank=4",
                             "lora.alpha=2.0", "reward.prompts.concept=church"])
    (run / "config.yaml").write_text(dump_config(cfg))
    policy = load_policy(cfg.model)
    attach_lora(policy.denoiser, cfg.lora)
    g = torch.Generator().manual_seed(1)
    state = {k: 0.3 * torch.randn(v.shape, generator=g)
             for k, v in get_adapter_state(policy.denoiser).items()}
    set_adapter_state(policy.denoiser, state)
    ref = transformer_output(policy.denoiser)
    manifest = adapter_manifest(policy.model_id, lora_config_hash(cfg.lora), state, 2)
    export_adapter(run, WeightsPacket(2, state, manifest))
    with safe_open(run / "adapter" / DIFFUSERS_WEIGHTS, "pt") as f:
        assert all(k.startswith("transformer.") for k in f.keys())

    pipe = StableDiffusion3Pipeline.from_pretrained(
        str(tiny_sd3_dir), text_encoder_3=None, tokenizer_3=None, dtype=torch.float32)
    base = transformer_output(pipe.transformer)
    pipe.load_lora_weights(str(run / "adapter"))
    assert (base - ref).abs().max() > 1e-2  # the adapter does change the transformer
    torch.testing.assert_close(transformer_output(pipe.transformer), ref, atol=1e-5, rtol=0)

    export_run(run, merged=tmp_path / "merged")
    merged = StableDiffusion3Pipeline.from_pretrained(
        str(tmp_path / "merged"), text_encoder_3=None, tokenizer_3=None, dtype=torch.float32)
    torch.testing.assert_close(transformer_output(merged.transformer), ref, atol=1e-5, rtol=0)
    card = (tmp_path / "merged" / "README.md").read_text()
    assert "StableDiffusion3Pipeline.from_pretrained" in card and "into its transformer" in card
    assert 'pipe("church", max_sequence_length=256)' in card
    assert json.loads((tmp_path / "merged" / POLICY_SETTINGS).read_text()) == {
        "max_sequence_length": 256}


def test_an_adapter_names_its_backbone_by_its_keys(sd3, tiny_components):
    from critic_unlearn.diffusion.contract import family_of_adapter
    from critic_unlearn.diffusion.lora import attach_lora, get_adapter_state

    cfg = load_config(None, [])
    attach_lora(tiny_components.denoiser, cfg.lora)
    assert family_of_adapter(get_adapter_state(tiny_components.denoiser)) == "sd1"
    assert family_of_adapter(["transformer_blocks.0.attn.to_q.lora_A.weight"]) == "sd3"
    with pytest.raises(ValueError, match="not one backbone's"):
        family_of_adapter(["text_model.encoder.layers.0.q_proj.lora_A.weight"])


def test_soft_prompt_attacks_are_refused_for_sd3_before_any_work(sd3, tiny_components):
    from critic_unlearn.adversarial.learn import require_soft_prompts

    require_soft_prompts(tiny_components, "attack.enabled")  # SD-1.x: the seam exists
    with pytest.raises(ValueError, match="attack.enabled: .*sd3 backbone.*attack.enabled=false"):
        require_soft_prompts(sd3, "attack.enabled")


def test_an_sde_window_keeps_the_other_steps_deterministic(sd3):
    """sampler.sde_window = 2 of 4 steps (Flow-GRPO-Fast): each trajectory stores exactly its
    window's two transitions (a window is consecutive, drawn from the seed), and they re-score
    exactly; the steps outside it are ODE steps, with no density, never stored."""
    specs = [PromptSpec(f"p{i}", "a red circle", "forget") for i in range(4)]
    seeds = [3, 4, 5, 6]
    trajs = sample_trajectories(sd3, specs, seeds, SamplerSettings(4, 0.7, 4.5, "sum"),
                                sde_window=2, decode=False)
    starts = set()
    for t in trajs:
        steps = t.steps.tolist()
        assert len(steps) == 2 and steps[1] == steps[0] + 1
        starts.add(steps[0])
    again = sample_trajectories(sd3, specs[:1], seeds[:1], SamplerSettings(4, 0.7, 4.5, "sum"),
                                sde_window=2, decode=False)[0]
    assert torch.equal(again.steps, trajs[0].steps)  # the window is the seed's, not the batch's
    torch.testing.assert_close(again.latents, trajs[0].latents, rtol=0, atol=1e-5)
    b = Batch.from_trajectories([t.with_reward(0.0) for t in trajs])
    sd3.set_timesteps(4)
    cond = sd3.encode(b.prompts)
    uncond = sd3.empty_condition().expand_as(cond)
    for j in range(2):
        out = sd3.step(b.latents[:, j], b.timesteps[:, j], cond, uncond, guidance_scale=4.5,
                       eta=0.7, prev_sample=b.next_latents[:, j])
        assert torch.equal(out.log_prob, b.log_probs[:, j])
    assert len(starts) > 1  # windows differ between seeds


def test_an_sde_window_is_refused_for_ddim(tiny_components):
    with pytest.raises(ValueError, match="sde_window is for flow-matching"):
        sample_trajectories(tiny_components, [PromptSpec("p", "a red circle")], [0],
                            SamplerSettings(4, 1.0, 3.0, "sum"), sde_window=2)
