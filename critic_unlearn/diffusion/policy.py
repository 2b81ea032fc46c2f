"""The denoising policy pi_theta(x_prev | x_t, c): guided noise + DDIM step with log-prob.

Used twice with the same code: by the sampler to act, and by the learner to re-score stored
transitions (give `prev_sample`). Keeping one function for both is what makes the importance
ratio exactly 1 when the weights did not change.

One precision policy, the same on both sides: the UNet computes in the base weights' dtype
(`model.dtype`; under autocast to it when that is fp16/bf16, so the fp32 LoRA weights run in it
too, and autocast explicitly off in fp32), and everything after the UNet (the DDIM mean, the
sampled x_prev, the Gaussian log-density summed over latent dims) is fp32. A sampled x_prev is
rounded to the latents' storage dtype *before* its log-prob is taken, so the learner re-scores
exactly the value that was scored. What remains in fp16/bf16 is the UNet's own rounding, which
can differ between the actor's batch and the learner's (kernels may depend on batch shape).
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from torch import Tensor
from transformers import CLIPTextModel, CLIPTokenizer

from critic_unlearn.diffusion.ddim_logprob import (
    DDIMStepOutput,
    Reduction,
    ddim_step_with_logprob,
    gaussian_log_prob,
)

LOW_PRECISION = (torch.float16, torch.bfloat16)


def compute_dtype(unet: torch.nn.Module) -> torch.dtype:
    """The dtype the policy computes in: its base weights' (LoRA weights are always fp32)."""
    for name, p in unet.named_parameters():
        if "lora_" not in name and p.is_floating_point():
            return p.dtype
    return torch.float32


def precision_context(
    device: torch.device | str, dtype: torch.dtype
) -> contextlib.AbstractContextManager:
    """The autocast state of every UNet evaluation of the policy, acting or re-scoring: autocast
    to `dtype` when it is fp16/bf16, autocast off otherwise (an outer autocast cannot leak in)."""
    kind = torch.device(device).type
    if dtype in LOW_PRECISION:
        return torch.autocast(kind, dtype=dtype)
    return torch.autocast(kind, enabled=False)


@torch.no_grad()
def encode_prompts(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, prompts: list[str]
) -> Tensor:
    """CLIP text embeddings as Stable Diffusion conditions on them: (B, L, D) last hidden state."""
    ids = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(text_encoder.device)
    return text_encoder(ids)[0]


def guided_noise(
    unet: UNet2DConditionModel,
    latents: Tensor,  # (B, C, H, W)
    timesteps: Tensor,  # (B,) or ()
    cond: Tensor,  # (B, L, D) prompt embeddings
    uncond: Tensor | None,  # (B, L, D) empty-prompt embeddings; None = no guidance
    guidance_scale: float,
) -> Tensor:
    """eps = eps_u + w (eps_c - eps_u), one UNet call on the doubled batch (as diffusers does)."""
    if uncond is None or guidance_scale == 1.0:
        return unet(latents, timesteps, encoder_hidden_states=cond).sample
    t = timesteps.expand(latents.shape[0]) if timesteps.ndim == 0 else timesteps
    eps = unet(
        torch.cat([latents, latents]),
        torch.cat([t, t]),
        encoder_hidden_states=torch.cat([uncond, cond]),
    ).sample
    eps_u, eps_c = eps.chunk(2)
    return eps_u + guidance_scale * (eps_c - eps_u)


def policy_step(
    unet: UNet2DConditionModel,
    scheduler: DDIMScheduler,
    latents: Tensor,  # (B, C, H, W) x_t
    timesteps: Tensor,  # (B,) or ()
    cond: Tensor,
    uncond: Tensor | None,
    *,
    guidance_scale: float,
    eta: float,
    prev_sample: Tensor | None = None,  # (B, C, H, W) stored x_{t_prev} to re-score
    generator: torch.Generator | list[torch.Generator] | None = None,
    variance_noise: Tensor | None = None,  # (B, C, H, W) fixed step noise instead of `generator`
    reduction: Reduction = "sum",
) -> DDIMStepOutput:
    """Act (sample x_prev) or re-score (given x_prev): one guided DDIM step with its log-prob.

    The UNet runs under `precision_context`; the step is fp32. A sampled prev_sample comes back in
    the latents' dtype (how it is stored) and its log-prob is that of the rounded value."""
    with precision_context(latents.device, compute_dtype(unet)):
        eps = guided_noise(unet, latents, timesteps, cond, uncond, guidance_scale)
    out = ddim_step_with_logprob(
        scheduler,
        eps.float(),
        timesteps,
        latents.float(),
        eta,
        generator=generator,
        variance_noise=variance_noise,
        prev_sample=None if prev_sample is None else prev_sample.float(),
        reduction=reduction,
    )
    if prev_sample is None and latents.dtype != torch.float32:
        x = out.prev_sample.to(latents.dtype)  # what is stored, so what the learner re-scores
        lp = gaussian_log_prob(x, out.mean, out.std, reduction)
        out = dataclasses.replace(out, prev_sample=x, log_prob=lp)
    return out
