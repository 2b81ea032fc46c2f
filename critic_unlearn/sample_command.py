"""`critic-unlearn sample`: the first thing a user can look at (grid + trajectory files)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console

from critic_unlearn.codec import encode_trajectory
from critic_unlearn.config import RunConfig, dump_config
from critic_unlearn.device import resolve_device
from critic_unlearn.diffusion.backbones import load_policy
from critic_unlearn.diffusion.sampling import PromptSpec, sample_trajectories
from critic_unlearn.io_utils import atomic_write_bytes, atomic_write_text, image_grid
from critic_unlearn.types import SamplerSettings

console = Console(stderr=True)


def run_sample(cfg: RunConfig, prompts: list[str], out: Path, *, num: int, seed: int) -> dict:
    """Sample `num` trajectories per prompt; write grid.png, trajectories/*.safetensors, config."""
    device = resolve_device(cfg.runtime.device)
    comps = load_policy(cfg.model, device=device)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", dump_config(cfg))
    specs = [PromptSpec(f"p{i}", text) for i, text in enumerate(prompts) for _ in range(num)]
    seeds = [seed + j for _ in prompts for j in range(num)]
    s = cfg.sampler
    settings = SamplerSettings(s.num_steps, s.eta, s.guidance_scale, s.log_prob_reduction)
    t0 = time.perf_counter()
    trajs = []
    for i in range(0, len(specs), s.batch_size):
        trajs += sample_trajectories(
            comps,
            specs[i : i + s.batch_size],
            seeds[i : i + s.batch_size],
            settings,
            keep_steps=s.keep_steps,
            height=s.height,
            width=s.width,
        )
    wall = time.perf_counter() - t0
    for i, tr in enumerate(trajs):
        atomic_write_bytes(out / "trajectories" / f"{i:04d}.safetensors", encode_trajectory(tr))
    images = torch.stack([tr.image for tr in trajs])
    scale = max(1, 256 // images.shape[1])
    image_grid(images, cols=num, scale=scale).save(out / "grid.png")
    mean_lp = torch.stack([tr.log_probs.sum() for tr in trajs]).mean().item()
    console.print(
        f"sampled {len(trajs)} trajectories x {s.num_steps} steps in {wall:.2f} s on {device}; "
        f"grid: {out / 'grid.png'}"
    )
    return {
        "trajectories": len(trajs),
        "sample_wall_s": round(wall, 3),
        "mean_chain_log_prob": round(mean_lp, 2),
        "out": str(out),
    }
