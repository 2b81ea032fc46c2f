"""The sampling loop: prompts + seeds -> `Trajectory` objects with per-step log-probs.

Each trajectory draws all its noise (x_T and every step's variance noise) from its own
`torch.Generator(seed)`, so a trajectory is reproducible from its seed whatever batch it was in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from critic_unlearn.diffusion.contract import Policy
from critic_unlearn.diffusion.flow_logprob import sde_window as window_mask
from critic_unlearn.types import Role, SamplerSettings, Trajectory


@dataclass(frozen=True)
class PromptSpec:
    prompt_id: str
    text: str
    role: Role = "retain"
    # (k, E) soft tokens after BOS (an adversarial pool prompt); None: plain text
    soft_tokens: Tensor | None = field(default=None, compare=False)


def window_noise(eta: float, num_steps: int, window: int | None, seeds: list[int]) -> Tensor:
    """(S, B) the step noise of each trajectory: `eta` inside its SDE window (`window`
    consecutive steps, the start drawn from the trajectory's seed), 0 (the ODE) outside it;
    `eta` everywhere without a window."""
    if window is None:
        return torch.full((num_steps, len(seeds)), float(eta))
    cols = []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed ^ 0x5DE5)
        start = int(torch.randint(num_steps - window + 1, (1,), generator=g))
        cols.append(torch.tensor(window_mask(num_steps, window, start), dtype=torch.float32))
    return float(eta) * torch.stack(cols, dim=1)


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


def decode_images(components: Policy, latents: Tensor) -> Tensor:
    """VAE decode -> (B, H, W, 3) uint8."""
    return pixels_to_images(components.decode(latents))


@torch.no_grad()
def sample_trajectories(
    components: Policy,
    prompts: list[PromptSpec],
    seeds: list[int],
    settings: SamplerSettings,
    *,
    keep_steps: int | None = None,
    sde_window: int | None = None,
    height: int | None = None,
    width: int | None = None,
    version: int = 0,
    actor_id: int = 0,
    decode: bool = True,
) -> list[Trajectory]:
    """Sample one denoising chain per (prompt, seed) with the policy as it is now (LoRA
    included). `sde_window` (flow models): only that many consecutive steps are stochastic."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
    c = components
    device = c.device  # latents are stored in the policy's compute dtype
    shape = c.latent_shape(height, width)
    gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    soft = [p.soft_tokens for p in prompts]
    cond = c.encode([p.text for p in prompts], soft if any(v is not None for v in soft) else None)
    uncond = None
    if settings.guidance_scale != 1.0:
        uncond = c.empty_condition().expand_as(cond)

    timesteps = c.set_timesteps(settings.num_steps)  # (S,) descending
    if sde_window is not None and c.family == "sd1":
        raise ValueError("sampler.sde_window is for flow-matching models (SD3-class): DDIM with "
                         "eta = 0 outside the window would have no log-probability; unset it")
    noise = window_noise(settings.eta, settings.num_steps, sde_window, seeds).to(device)
    x = c.initial_noise(shape, gens)
    states, log_probs, stds = [x], [], []
    for i, t in enumerate(timesteps):
        out = c.step(
            x,
            t,
            cond,
            uncond,
            guidance_scale=settings.guidance_scale,
            eta=settings.eta if sde_window is None else noise[i],
            generator=gens,
            reduction=settings.log_prob_reduction,
        )
        x = out.prev_sample
        states.append(x)
        log_probs.append(out.log_prob)
        stds.append(out.std.reshape(-1).expand(len(seeds)))

    # a sigma = 0 step (DDIM's last with set_alpha_to_one, an ODE step outside an SDE window)
    # has no density: never kept
    std_by_row = torch.stack(stds, dim=1).cpu()  # (B, S)

    images = decode_images(c, x) if decode else None
    chain = torch.stack(states, dim=1).cpu()  # (B, S+1, C, H, W)
    lp = torch.stack(log_probs, dim=1).cpu()  # (B, S)
    t_cpu = timesteps.cpu()  # DDIM's int64, flow's float32 (sigma * 1000)
    out_trajs = []
    for i, (spec, seed) in enumerate(zip(prompts, seeds, strict=True)):
        stochastic = [p for p, s in enumerate(std_by_row[i].tolist()) if s > 0]
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
