"""The denoising policy pi_theta(x_prev | x_t, c): guided noise + DDIM step with log-prob.

Used twice with the same code: by the sampler to act, and by the learner to re-score stored
transitions (give `prev_sample`). Keeping one function for both is what makes the importance
ratio exactly 1 when the weights did not change.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from torch import Tensor
from transformers import CLIPTextModel, CLIPTokenizer

from critic_unlearn.diffusion.ddim_logprob import DDIMStepOutput, Reduction, ddim_step_with_logprob


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
    reduction: Reduction = "sum",
) -> DDIMStepOutput:
    """Act (sample x_prev) or re-score (given x_prev): one guided DDIM step with its log-prob."""
    eps = guided_noise(unet, latents, timesteps, cond, uncond, guidance_scale)
    return ddim_step_with_logprob(
        scheduler,
        eps,
        timesteps,
        latents,
        eta,
        generator=generator,
        prev_sample=prev_sample,
        reduction=reduction,
    )
