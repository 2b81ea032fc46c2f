"""One precision policy for actor and learner (diffusion/policy.py).

The behaviour log-prob (actor, `sample_trajectories`) and the learner's re-score (`_score`) run
the same `policy_step`: UNet in the base weights' dtype under the same autocast state, DDIM step
and Gaussian log-density in fp32, LoRA weights fp32 on both sides. Re-scored in the actor's own
batch shapes, the log ratio at equal versions is exactly 0 in fp32. The learner trains in other
shapes (minibatches, one random step per trajectory), and whether fp32 results are then still
bit-identical is the BLAS's business, not ours: on the machine of earlier sessions they were
(ratio exactly 1, also in bf16, also at SD-1.5's latent size), on an AVX-512/AMX Xeon the sum
over a trajectory step's log-density moves by up to 2.4e-4 on log-probs of 200-630 (7.5e-7
relative: a few fp32 ulps), because its GEMM kernels depend on the batch's row count. So in
training shapes the test bounds the ratio by fp32 round-off. Before this policy the log ratio
reached 30 (tiny model) and 1,438 (SD-1.5 latent size) in bf16: a precision mismatch is five
orders of magnitude above that bound.
"""

from __future__ import annotations

import pytest
import torch

from critic_unlearn.config import load_config
from critic_unlearn.diffusion.loading import load_components
from critic_unlearn.diffusion.lora import attach_lora, get_adapter_state, set_adapter_state
from critic_unlearn.diffusion.policy import compute_dtype, encode_prompts, precision_context
from critic_unlearn.diffusion.sampling import PromptSpec, sample_trajectories
from critic_unlearn.learner.learner import Learner
from critic_unlearn.types import Batch, SamplerSettings

PROMPTS = ["a red circle", "a blue square", "a green cross", "two yellow dots"]
TOLERANCE = 1e-3  # |log pi_learner - log mu_actor| per step, reduction = sum (the target)
FP32_ROUNDOFF = 32 * torch.finfo(torch.float32).eps  # relative: 32 ulps of a summed log-prob


def overrides(dtype: str) -> list[str]:
    return [
        f"model.dtype={dtype}",
        "critic.enabled=false",
        "learner.advantage=terminal",
        "sampler.num_steps=4",
        "sampler.guidance_scale=3.0",
        "sampler.log_prob_reduction=sum",
        "learner.batch_size=4",
        "learner.minibatch_size=2",
        "learner.lr=1e-2",
    ]


def actor_and_learner(model_dir, dtype: str, device="cpu"):
    """An actor's components and a learner, separately loaded, holding the same random adapter
    (non-zero, so the LoRA branch matters) at the same version."""
    cfg = load_config(None, overrides(dtype))
    actor = load_components(str(model_dir), dtype=dtype, device=device)
    attach_lora(actor.unet, cfg.lora)
    learner = Learner(cfg, load_components(str(model_dir), dtype=dtype, device=device))
    g = torch.Generator().manual_seed(1)
    state = {
        k: 0.2 * torch.randn(v.shape, generator=g)
        for k, v in get_adapter_state(learner.c.unet).items()
    }
    set_adapter_state(learner.c.unet, {k: v.to(device) for k, v in state.items()})
    published = learner.weights().state_dict  # CPU copies, as actors receive them
    set_adapter_state(actor.unet, {k: v.to(device) for k, v in published.items()})
    return cfg, actor, learner


@torch.no_grad()
def rescore(learner, batch: Batch, cond: torch.Tensor, shapes: str) -> torch.Tensor:
    """log pi_learner - log mu_actor for every (trajectory, step). `shapes="actor"`: the whole
    batch at one step at a time, as the actor sampled it; `"training"`: minibatches of 2
    trajectories with a different step in each row (as `_policy_update` does)."""
    dev = learner.device
    k = batch.timesteps.shape[1]
    n = batch.latents.shape[0]
    if shapes == "actor":
        groups = [(torch.arange(n), torch.full((n,), step)) for step in range(k)]
    else:
        g = torch.Generator().manual_seed(5)
        groups = [(mb, (torch.arange(len(mb)) + shift) % k)
                  for mb in torch.randperm(n, generator=g).split(2) for shift in range(k)]
    out = torch.full((n, k), float("nan"))
    for mb, idx in groups:
        score = learner._score(
            batch.latents[mb, idx].to(dev),
            batch.next_latents[mb, idx].to(dev),
            batch.timesteps[mb, idx].to(dev),
            cond[mb],
            batch,
        )
        out[mb, idx] = (score.log_prob - batch.log_probs[mb, idx].to(dev)).cpu()
    return out


@torch.no_grad()
def log_ratios(cfg, actor, learner, size: int | None = None) -> tuple[Batch, torch.Tensor]:
    """Behaviour log-probs from the actor's batch of 4, re-scored by the learner in training
    shapes (`rescore`)."""
    s = cfg.sampler
    settings = SamplerSettings(s.num_steps, s.eta, s.guidance_scale, s.log_prob_reduction)
    specs = [PromptSpec(f"p{i}", t, "forget") for i, t in enumerate(PROMPTS)]
    trajs = sample_trajectories(
        actor, specs, [0, 1, 2, 3], settings, height=size, width=size, decode=False
    )
    batch = Batch.from_trajectories([t.with_reward(0.0) for t in trajs])
    learner.c.scheduler.set_timesteps(s.num_steps, device=learner.device)
    cond = encode_prompts(learner.c.tokenizer, learner.c.text_encoder, batch.prompts)
    return batch, rescore(learner, batch, cond, "training")


def assert_fp32_ratio_is_one(batch: Batch, actor_shapes: torch.Tensor,
                             training_shapes: torch.Tensor) -> None:
    """Exactly 0 in the actor's shapes; within fp32 round-off of |log mu| in training shapes."""
    assert torch.equal(actor_shapes, torch.zeros_like(actor_shapes))
    bound = FP32_ROUNDOFF * batch.log_probs.abs()
    assert (training_shapes.abs() <= bound).all(), (training_shapes.abs().max(), bound.min())


def test_ratio_is_one_at_equal_versions_in_fp32(tiny_model_dir):
    cfg, actor, learner = actor_and_learner(tiny_model_dir, "float32")
    batch, in_training_shapes = log_ratios(cfg, actor, learner)
    cond = encode_prompts(learner.c.tokenizer, learner.c.text_encoder, batch.prompts)
    assert_fp32_ratio_is_one(batch, rescore(learner, batch, cond, "actor"), in_training_shapes)


@pytest.mark.parametrize("size", [None, 128], ids=["tiny-latents", "sd15-latents-64x64"])
def test_bf16_on_both_sides_keeps_the_log_ratio_within_tolerance(tiny_model_dir, size):
    cfg, actor, learner = actor_and_learner(tiny_model_dir, "bfloat16")
    batch, lr = log_ratios(cfg, actor, learner, size)
    assert batch.latents.dtype == torch.bfloat16  # stored as sampled: half the replay bytes
    assert batch.log_probs.abs().min() > (100 if size is None else 10_000)  # sum over dims
    print(f"bf16 max |log ratio| = {lr.abs().max().item():.3g} ({batch.latents.shape[-3:]})")
    assert lr.abs().max() < TOLERANCE


def test_base_weights_low_precision_lora_and_optimiser_fp32(tiny_model_dir):
    cfg, actor, learner = actor_and_learner(tiny_model_dir, "bfloat16")
    for unet in (actor.unet, learner.c.unet):
        assert compute_dtype(unet) == torch.bfloat16
        for name, p in unet.named_parameters():
            assert p.dtype == (torch.float32 if "lora_" in name else torch.bfloat16), name
    # the actor holds exactly the values the learner publishes
    mine, theirs = get_adapter_state(actor.unet), learner.weights().state_dict
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    batch, _ = log_ratios(cfg, actor, learner)
    metrics = learner.step(batch)
    assert metrics["learner/version"] == 1.0
    states = list(learner.policy_opt.state.values())
    assert states and all(
        v.dtype == torch.float32 for st in states for v in st.values() if v.is_floating_point()
    )
    assert all(p.dtype == torch.float32 for p in learner.lora_params)


def test_precision_context_sets_one_autocast_state():
    with precision_context("cpu", torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16), precision_context("cpu", torch.float32):
        assert not torch.is_autocast_enabled("cpu")  # an outer autocast does not leak in
