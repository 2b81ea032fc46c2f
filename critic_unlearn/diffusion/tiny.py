"""Tiny, randomly initialised Stable Diffusion models built offline, for tests and the first demo.

`clip_tokenizer()` builds the real CLIP BPE tokenizer from the vocabulary that open_clip ships
in its package, so nothing is downloaded. `build_tiny_model(dir)` saves a complete pipeline in
diffusers layout with `save_pretrained`; it loads back through the same `from_pretrained` code a
real model uses.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer


def clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """CLIP's BPE tokenizer (49,408 tokens) from open_clip's bundled merges file; no download."""
    import open_clip.tokenizer as oct

    path = os.path.join(os.path.dirname(oct.__file__), "bpe_simple_vocab_16e6.txt.gz")
    merges = gzip.open(path).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(oct.bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={tok: i for i, tok in enumerate(vocab)},
        merges=[tuple(m.split()) for m in merges],
        model_max_length=model_max_length,
    )


def sd_ddim_scheduler(**overrides) -> DDIMScheduler:
    """DDIM with Stable Diffusion 1.x's noise schedule (steps_offset 1, as diffusers expects);
    `overrides` replace any DDIMScheduler argument (e.g. set_alpha_to_one, prediction_type)."""
    return DDIMScheduler(**{
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        **overrides,
    })


# A 32x32 ViT CLIP of width 32: the smallest open_clip model the reward and critic code accept.
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
CLIP_PREPROCESS = {
    "mean": [0.48, 0.46, 0.41],
    "std": [0.27, 0.26, 0.28],
    "interpolation": "bicubic",
}


def tiny_clip(seed: int = 0, model_cfg: dict | None = None, size: int = 32):
    """A randomly initialised open_clip CLIP as a `LoadedClip` (tiny unless `model_cfg` given)."""
    import open_clip

    from critic_unlearn.rewards.openclip_loading import LoadedClip

    torch.manual_seed(seed)
    cfg = model_cfg or TINY_CLIP_CFG
    model = open_clip.model.CLIP(**cfg)
    return LoadedClip(
        model, open_clip.get_tokenizer("ViT-B-32"), {**CLIP_PREPROCESS, "size": size}, "random", cfg
    )


def _tiny_vae(sample_size: int, **latents) -> AutoencoderKL:
    """A 2-level VAE (4x downsampling); `latents`: latent_channels and any SD3 specifics."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        norm_num_groups=32,
        sample_size=sample_size * 2,
        **latents,
    )


def _tiny_text_config(**extra) -> CLIPTextConfig:
    """A 2-layer CLIP text encoder of width 32 over CLIP's real vocabulary."""
    return CLIPTextConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=49408,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        **extra,
    )


def _save_once(out_dir: str | Path, make_pipeline) -> Path:
    """Save `make_pipeline()` at `out_dir` unless a complete folder is there (idempotent); a
    half-written folder never carries the final name."""
    out = Path(out_dir)
    if (out / "model_index.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    make_pipeline().save_pretrained(tmp, safe_serialization=True)
    tmp.replace(out)
    return out


def tiny_components(seed: int = 0, sample_size: int = 8) -> dict:
    """A UNet with a few channels, a 2-layer CLIP text encoder, a tiny VAE (4x downsampling)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = _tiny_vae(sample_size, latent_channels=4)
    text_encoder = CLIPTextModel(_tiny_text_config())
    scheduler = sd_ddim_scheduler()
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": clip_tokenizer(),
        "scheduler": scheduler,
    }


def build_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny random pipeline in diffusers layout (idempotent: reuses a complete folder)."""
    return _save_once(out_dir, lambda: StableDiffusionPipeline(
        **tiny_components(seed),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ))


def tiny_sd3_components(seed: int = 0, sample_size: int = 8) -> dict:
    """An SD3-class model of a few channels: a 1-block MMDiT over 16-channel latents (as SD3's),
    two 2-layer CLIP text encoders with projections (pooled 2 x 32), no T5 (diffusers then
    conditions on zeros in its place), a tiny 16-channel VAE with SD3's shift and scale."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,  # the two CLIPs' hidden states side by side: 32 + 32
        caption_projection_dim=32,
        pooled_projection_dim=64,  # the two CLIPs' projections: 32 + 32
        pos_embed_max_size=16,
    )
    vae = _tiny_vae(sample_size, latent_channels=16, shift_factor=0.0609, scaling_factor=1.5305,
                    use_quant_conv=False, use_post_quant_conv=False)

    def text_encoder() -> CLIPTextModelWithProjection:
        return CLIPTextModelWithProjection(_tiny_text_config(projection_dim=32)).eval()

    return {
        "transformer": transformer.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder(),
        "text_encoder_2": text_encoder(),
        "text_encoder_3": None,
        "tokenizer": clip_tokenizer(),
        "tokenizer_2": clip_tokenizer(),
        "tokenizer_3": None,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),  # SD3's
    }


def build_tiny_sd3(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny random StableDiffusion3Pipeline in diffusers layout (idempotent)."""
    from diffusers import StableDiffusion3Pipeline

    return _save_once(out_dir, lambda: StableDiffusion3Pipeline(**tiny_sd3_components(seed)))
