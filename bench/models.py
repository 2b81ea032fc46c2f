"""Random-weight models the benches build (nothing downloaded), shared by every kind of bench."""

from __future__ import annotations

from pathlib import Path

from critic_unlearn.diffusion.tiny import tiny_clip
from critic_unlearn.rewards.openclip_loading import save_open_clip


def sd15_shaped_model(out: str) -> str:
    """SD-1.5 architecture with random weights, saved in diffusers layout at `out`."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from critic_unlearn.diffusion.tiny import clip_tokenizer, sd_ddim_scheduler

    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel(sample_size=64, cross_attention_dim=768),
        vae=AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            latent_channels=4,
            layers_per_block=2,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            sample_size=512,
        ),
        text_encoder=CLIPTextModel(
            CLIPTextConfig(
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                projection_dim=768,
            )
        ),
        tokenizer=clip_tokenizer(),
        scheduler=sd_ddim_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out)
    return out


def tiny_clip_dir(root: Path) -> Path:
    """A random tiny CLIP (32x32 ViT, width 32) saved where `reward.clip_model` can load it."""
    return save_open_clip(tiny_clip(0), root / "tiny-clip")
