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


def sd35m_shaped_model(out: str) -> str:
    """Stable Diffusion 3.5 Medium's architecture with random weights (the MMDiT of 24 blocks,
    CLIP-L and CLIP-G text encoders, the 16-channel VAE, shift-3 flow matching), saved in
    diffusers layout at `out` in bf16. No T5: diffusers conditions on zeros in its place, as with
    a pipeline saved without it; its 4.7B parameters would only add text-encoding time."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from critic_unlearn.diffusion.tiny import clip_tokenizer

    def clip(hidden: int, layers: int, heads: int) -> CLIPTextModelWithProjection:
        return CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
            num_attention_heads=heads, projection_dim=hidden, hidden_act="gelu",
        ))

    pipe = StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(
            sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
            attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
            caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
            dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
        ),
        vae=AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            latent_channels=16,
            layers_per_block=2,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            sample_size=1024,
            shift_factor=0.0609,
            scaling_factor=1.5305,
            use_quant_conv=False,
            use_post_quant_conv=False,
        ),
        text_encoder=clip(768, 12, 12),  # CLIP ViT-L/14's text tower
        text_encoder_2=clip(1280, 32, 20),  # OpenCLIP ViT-bigG/14's
        text_encoder_3=None,
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        tokenizer_3=None,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )
    pipe.to(torch.bfloat16).save_pretrained(out)
    return out


def tiny_clip_dir(root: Path) -> Path:
    """A random tiny CLIP (32x32 ViT, width 32) saved where `reward.clip_model` can load it."""
    return save_open_clip(tiny_clip(0), root / "tiny-clip")
