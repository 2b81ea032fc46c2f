"""The toy world's VAE: diffusers' AutoencoderKL, 32x32 RGB <-> 8x8x4 latents (4x downsampling).

8x8 latents make every UNet step about 4x cheaper than 16x16 ones, which is what lets the UNet
get the thousands of updates shape needs within the build budget. No mid-block attention: the
probe lost shapes with it. KL weight is tiny (as in Stable Diffusion); the latents are then
rescaled to unit variance through `scaling_factor`, which the saved config carries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import Tensor

from critic_unlearn.toyworld.data import ShapeData
from critic_unlearn.toyworld.progress import stage
from critic_unlearn.toyworld.training import batch_indices, set_lr, warmup_cosine


@dataclass(frozen=True)
class VaeConfig:
    block_out_channels: tuple[int, ...] = (16, 32, 32)  # 3 blocks: 2 downsamplings, 32 -> 8
    latent_channels: int = 4
    norm_num_groups: int = 8
    steps: int = 900
    batch_size: int = 64
    lr: float = 2e-3
    kl_weight: float = 1e-6
    seed: int = 303


def build_vae(cfg: VaeConfig, image_size: int = 32) -> AutoencoderKL:
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.block_out_channels,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=image_size,
        mid_block_add_attention=False,
    )


def to_model_range(images: Tensor) -> Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1], the VAE's pixel range."""
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def train_vae(data: ShapeData, cfg: VaeConfig) -> AutoencoderKL:
    """MSE reconstruction + tiny KL; returns the VAE in eval mode (scaling factor not yet set)."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    vae = build_vae(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    vae.train()
    with stage("VAE", cfg.steps) as bar:
        for step, idx in enumerate(batch_indices(len(data), cfg.batch_size, cfg.steps, g)):
            set_lr(opt, cfg.lr * warmup_cosine(step, cfg.steps, max(1, cfg.steps // 20)))
            x = to_model_range(data.images[idx])
            posterior = vae.encode(x).latent_dist
            rec = vae.decode(posterior.sample(generator=g)).sample
            mse = F.mse_loss(rec, x)
            loss = mse + cfg.kl_weight * posterior.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(mse=mse.item())
    return vae.eval()


@torch.no_grad()
def encode(vae: AutoencoderKL, images: Tensor, batch_size: int = 512) -> Tensor:
    """(N, H, W, 3) uint8 -> (N, C, h, w) posterior means, unscaled."""
    return torch.cat(
        [vae.encode(to_model_range(c)).latent_dist.mean for c in images.split(batch_size)]
    )


@torch.no_grad()
def decode(vae: AutoencoderKL, latents: Tensor, batch_size: int = 512) -> Tensor:
    """(N, C, h, w) unscaled latents -> (N, H, W, 3) uint8."""
    out = []
    for c in latents.split(batch_size):
        x = vae.decode(c).sample
        out.append(((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1))
    return torch.cat(out)


def set_scaling_factor(vae: AutoencoderKL, latents: Tensor) -> float:
    """Scale latents to unit std, as SD does with 0.18215; stored in the VAE's config."""
    factor = float(1.0 / latents.float().std())
    vae.register_to_config(scaling_factor=factor)
    return factor
