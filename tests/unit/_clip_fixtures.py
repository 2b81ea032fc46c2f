"""A tiny random open_clip model saved as a local folder, loaded back through the real loader."""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch

from critic_unlearn.rewards.openclip_loading import LoadedClip, load_open_clip, save_open_clip

TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
VISION_CFGS = {
    # ViT: 32x32 images, 4x4 = 16 patches of 8 pixels, one block of width 32
    "vit": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    # ModifiedResNet: one bottleneck per stage, width 8 (256 channels out), attention pool
    "resnet": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 64},
}
PREPROCESS = {"mean": [0.48, 0.46, 0.41], "std": [0.27, 0.26, 0.28], "interpolation": "bicubic"}


def tiny_clip_folder(root: Path, tower: str = "vit", seed: int = 0) -> Path:
    """Build a random tiny CLIP, save it in the folder layout `load_open_clip` reads."""
    torch.manual_seed(seed)
    model_cfg = {"embed_dim": 32, "vision_cfg": VISION_CFGS[tower], "text_cfg": TEXT_CFG}
    model = open_clip.model.CLIP(**model_cfg)
    open_clip.model.set_model_preprocess_cfg(model, {**PREPROCESS, "size": 32})
    clip = LoadedClip(model, None, {**PREPROCESS, "size": 32}, "tiny", model_cfg)
    return save_open_clip(clip, root / f"tiny-clip-{tower}-{seed}")


def tiny_clip(root: Path, tower: str = "vit", seed: int = 0) -> LoadedClip:
    return load_open_clip(str(tiny_clip_folder(root, tower, seed)))


class ColourClassifier(torch.nn.Module):
    """A fixed 'judge': logits = scale * mean of each colour channel (classes red, green, blue)."""

    def __init__(self, scale: float = 10.0) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        colour = self.scale * images.mean(dim=(2, 3))  # (B, 3)
        return colour, -colour  # two heads, like the toy world's judge (colour, shape)
