"""The sampling loop: prompts + seeds -> `Trajectory` objects with per-step log-probs.

Each trajectory draws all its noise (x_T and every step's variance noise) from its own
`torch.Generator(seed)`, so a trajectory is reproducible from its seed whatever batch it was in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from critic_unlearn.diffusion.loading import SDComponents
from critic_unlearn.diffusion.policy import compute_dtype, encode_prompts, policy_step
from critic_unlearn.diffusion.soft_prompt import encode_conditioning
from critic_unlearn.types import Role, SamplerSettings, Trajectory


@dataclass(frozen=True)
class PromptSpec:
    prompt_id: str
    text: str
    role: Role = "retain"
    # (k, E) soft tokens after BOS (an adversarial pool prompt); None: plain text
    soft_tokens: Tensor | None = field(default=None, compare=False)


def choose_kept_steps(stochastic: list[int], keep: int | None, seed: int) -> list[int]:
    """K of the stochastic schedule positions, random but fixed by the trajectory's seed."""
    if keep is None or keep >= len(stochastic):
        return stochastic
    g = torch.Generator().manual_seed(seed ^ 0x5EED)
    pick = torch.randperm(len(stochastic), generator=g)[:keep].sort().values
    return [stochastic[i] for i in pick.tolist()]


@torch.no_grad()
def pixels_to_images(pixels: Tensor) -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, as diffusers' image processor does for
    PIL output: how actors turn x0 into the images they score, and the critic its states."""
    x = ((pixels.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu()


def decode_images(components: SDComponents, latents: Tensor) -> Tensor:
    """VAE decode -> (B, H, W, 3) uint8."""
    vae = components.vae
    return pixels_to_images(vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample)


@torch.no_grad()
def sample_trajectories(
    components: SDComponents,
    prompts: list[PromptSpec],
    seeds: list[int],
    settings: SamplerSettings,
    *,
    keep_steps: int | None = None,
    height: int | None = None,
    width: int | None = None,
    version: int = 0,
    actor_id: int = 0,
    decode: bool = True,
) -> list[Trajectory]:
    """Sample one denoising chain per (prompt, seed) with the UNet as it is now (LoRA included)."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
    c = components
    device, dtype = c.device, compute_dtype(c.unet)  # latents are stored in this dtype
    h = (height or c.default_size) // c.vae_scale_factor
    w = (width or c.default_size) // c.vae_scale_factor
    shape = (c.unet.config.in_channels, h, w)
    gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    soft = [p.soft_tokens for p in prompts]
    cond = encode_conditioning(c.tokenizer, c.text_encoder, [p.text for p in prompts],
                               soft if any(v is not None for v in soft) else None)
    uncond = None
    if settings.guidance_scale != 1.0:
        uncond = encode_prompts(c.tokenizer, c.text_encoder, [""]).expand_as(cond)

    c.scheduler.set_timesteps(settings.num_steps, device=device)
    timesteps = c.scheduler.timesteps  # (S,) descending
    x = torch.stack([torch.randn(shape, generator=g, device=device, dtype=dtype) for g in gens])
    x = x * c.scheduler.init_noise_sigma
    states, log_probs, stds = [x], [], []
    for t in timesteps:
        out = policy_step(
            c.unet,
            c.scheduler,
            x,
            t,
            cond,
            uncond,
            guidance_scale=settings.guidance_scale,
            eta=settings.eta,
            generator=gens,
            reduction=settings.log_prob_reduction,
        )
        x = out.prev_sample
        states.append(x)
        log_probs.append(out.log_prob)
        stds.append(out.std[0, 0, 0, 0])

    # a sigma = 0 step (the last one with set_alpha_to_one) has no density: never kept
    stochastic = [p for p, s in enumerate(torch.stack(stds).tolist()) if s > 0]

    images = decode_images(c, x) if decode else None
    chain = torch.stack(states, dim=1).cpu()  # (B, S+1, C, H, W)
    lp = torch.stack(log_probs, dim=1).cpu()  # (B, S)
    t_cpu = timesteps.cpu().long()
    out_trajs = []
    for i, (spec, seed) in enumerate(zip(prompts, seeds, strict=True)):
        kept = choose_kept_steps(stochastic, keep_steps, seed)
        steps = torch.tensor(kept, dtype=torch.long)
        positions = torch.unique(torch.cat([steps, steps + 1]))  # sorted
        out_trajs.append(
            Trajectory(
                prompt_id=spec.prompt_id,
                prompt=spec.text,
                role=spec.role,
                latents=chain[i, positions].clone(),
                positions=positions,
                steps=steps,
                timesteps=t_cpu[steps],
                log_probs=lp[i, steps].float().clone(),
                reward=float("nan"),
                version=version,
                actor_id=actor_id,
                seed=seed,
                sampler=settings,
                image=None if images is None else images[i],
                soft_tokens=None if spec.soft_tokens is None
                else spec.soft_tokens.detach().float().cpu().contiguous(),
            )
        )
    return out_trajs
