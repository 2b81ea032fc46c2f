"""The world's text-to-image model in Stable Diffusion layout: tiny CLIP text encoder, UNet, DDIM.

The tokenizer is CLIP's real BPE tokenizer (offline, from open_clip's vocabulary) with a
16-token context: captions have at most 11 tokens, and a short context makes cross-attention
and the text encoder cheaper. The UNet runs on 8x8x4 latents with cross-attention only at 8x8
and 4x4. Saved with `save_pretrained`, weights rewritten in fp16, configs still float32, so
`StableDiffusionPipeline.from_pretrained(folder)` and `load_components(folder)` both load it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from critic_unlearn.diffusion.tiny import clip_tokenizer, sd_ddim_scheduler
from critic_unlearn.toyworld.training import to_fp16_file

UP = {"CrossAttnDownBlock2D": "CrossAttnUpBlock2D", "DownBlock2D": "UpBlock2D"}


@dataclass(frozen=True)
class DiffusionConfig:
    max_length: int = 16  # tokenizer model_max_length = text encoder positions
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    block_out_channels: tuple[int, ...] = (32, 64, 64)  # UNet levels at 8x8, 4x4, 2x2
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"
    )
    layers_per_block: int = 1
    attention_head_dim: int = 8
    norm_num_groups: int = 16
    steps: int = 6000  # optimiser steps (UNet and text encoder jointly); 100% by ~3500 in probes
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 200
    lr_floor: float = 0.1  # cosine decays the lr to this fraction of its peak
    min_snr_gamma: float = 5.0  # min-SNR loss weighting (Hang et al. 2023)
    caption_dropout: float = 0.1  # empty caption this often, for classifier-free guidance
    # captions naming a random colour this often (data.make_split): the model then misdraws
    # colours at low guidance (CFG 1-1.5), which RL unlearning explores from; CFG 5 hides it
    colour_caption_noise: float = 0.15
    ema_decay: float = 0.999
    eval_every: int = 1000  # steps between quick generation checks in the log (0 = never)
    seed: int = 404


def build_text_encoder(cfg: DiffusionConfig) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            hidden_size=cfg.text_hidden,
            intermediate_size=cfg.text_hidden * 2,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads,
            vocab_size=49408,
            max_position_embeddings=cfg.max_length,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )


def build_unet(
    cfg: DiffusionConfig, latent_channels: int, sample_size: int
) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=cfg.block_out_channels,
        down_block_types=cfg.down_block_types,
        up_block_types=tuple(UP[b] for b in reversed(cfg.down_block_types)),
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.text_hidden,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
    )


def save_pipeline(
    folder: Path,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    cfg: DiffusionConfig,
) -> Path:
    """`save_pretrained` in diffusers layout, then every weight file rewritten in fp16."""
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(cfg.max_length),
        unet=unet,
        scheduler=sd_ddim_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    for f in sorted(folder.rglob("*.safetensors")):
        to_fp16_file(f)
    _compact_json(folder / "tokenizer" / "tokenizer.json")
    return folder


def _compact_json(path: Path) -> None:
    """Rewrite without indentation: CLIP's tokenizer.json shrinks from 3.6 MB to 1.7 MB."""
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        path.write_text(text, encoding="utf-8")
