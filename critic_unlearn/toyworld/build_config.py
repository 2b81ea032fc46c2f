"""What a toy-world build trains: one frozen config, the full one and a seconds-long reduced one.

The full config is written into the world's model card; a test checks that the committed world's
card still equals `BuildConfig.full()`, so the shipped weights always match the code's recipe.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from critic_unlearn.toyworld.gates import SamplerSpec
from critic_unlearn.toyworld.judge import JudgeConfig
from critic_unlearn.toyworld.pipeline import DiffusionConfig
from critic_unlearn.toyworld.reward_clip import ClipConfig
from critic_unlearn.toyworld.vae import VaeConfig


@dataclass(frozen=True)
class BuildConfig:
    name: str = "full"
    seed: int = 0  # data splits: seed*1000 + 1 (train), 2 (val), 3 (held-out), 4 (full hue)
    n_train: int = 40_000  # images (incl. none_fraction without a shape, for the judge only)
    n_val: int = 2_000
    n_heldout: int = 4_000  # rendered with the held-out templates; judge and CLIP gates
    none_fraction: float = 0.05
    n_full_hue: int = 20_000  # extra images of any hue (nearest-colour labels): judge, CLIP, VAE
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    gate_per_pair: int = 64  # generated images per (colour, shape) pair for the gates
    gate_seed_offset: int = 10_000_000  # held-out seeds: never used by training or RL defaults
    heldout_template_per_pair: int = 24  # generations with held-out templates (reported)
    progress_per_pair: int = 8  # generations per pair in the periodic checks during training
    # reported beside the gates: the few-step sampler the toy scenarios' RL settings use
    fast_sampler: SamplerSpec = field(default_factory=lambda: SamplerSpec(num_steps=10))

    @staticmethod
    def full() -> BuildConfig:
        return BuildConfig()

    @staticmethod
    def reduced() -> BuildConfig:
        """Tiny models and a few steps of everything: proves the build path in seconds."""
        return BuildConfig(
            name="reduced",
            n_train=256,
            n_val=32,
            n_heldout=64,
            n_full_hue=64,
            judge=JudgeConfig(widths=(8, 16), steps=8, batch_size=32),
            clip=ClipConfig(
                model_cfg={
                    "embed_dim": 16,
                    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8,
                                   "head_width": 16},
                    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16,
                                 "heads": 2, "layers": 1},
                },
                steps=8,
                batch_size=32,
            ),
            vae=VaeConfig(block_out_channels=(8, 8, 8), norm_num_groups=4, steps=8, batch_size=16),
            diffusion=DiffusionConfig(
                text_hidden=16, text_layers=1, text_heads=2, block_out_channels=(16, 16, 16),
                norm_num_groups=8, attention_head_dim=4, steps=8, warmup=2, eval_every=8,
            ),
            sampler=SamplerSpec(num_steps=2, batch_size=32),
            fast_sampler=SamplerSpec(num_steps=1, batch_size=32),
            gate_per_pair=2,
            heldout_template_per_pair=1,
            progress_per_pair=1,
        )

    def to_json(self) -> dict:
        """Plain JSON types (tuples become lists), as the model card stores it."""
        return json.loads(json.dumps(asdict(self)))
