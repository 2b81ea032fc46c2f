"""The judge: an independent two-head CNN (colour, shape) that scores generated images.

It is a plain conv net trained with a different seed and objective (cross-entropy on labels)
from the reward CLIP (a contrastive ResNet), and it is never a training reward in the default
scenarios, so an unlearning run cannot be tuned against it. Each head has a fifth class, "none",
for images without a shape, so an erased image is not forced into one of the four classes.

Saved as `classifier.json` + `model.safetensors`, the layout `rewards.classifier.load_classifier`
reads, so the judge can also serve as a classifier reward when a scenario asks for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from critic_unlearn.toyworld.data import COLOURS, SHAPES, VOCABULARY, ShapeData
from critic_unlearn.toyworld.progress import stage
from critic_unlearn.toyworld.training import batch_indices, set_lr, warmup_cosine

HEADS = ("colour", "shape")
COLOUR_CLASSES = (*COLOURS, "none")
SHAPE_CLASSES = (*SHAPES, "none")
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class JudgeConfig:
    widths: tuple[int, ...] = (32, 64, 128)  # conv channels per stage (each stage halves H, W)
    steps: int = 500  # optimiser steps
    batch_size: int = 128
    lr: float = 2e-3
    noise: float = 0.08  # max std of Gaussian pixel noise added in training (pixels in [0, 1])
    blur_prob: float = 0.3  # fraction of training images blurred (generated images are soft)
    seed: int = 101  # differs from the reward CLIP's seed on purpose


class Judge(nn.Module):
    """(B, 3, H, W) float in [0, 1] -> {"colour": (B, 5), "shape": (B, 5)} logits."""

    def __init__(self, widths: list[int] | tuple[int, ...] = (32, 64, 128), size: int = 32):
        super().__init__()
        self.size = size
        layers: list[nn.Module] = []
        c_in = 3
        for w in widths:
            layers += [
                nn.Conv2d(c_in, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
                nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            c_in = w
        self.features = nn.Sequential(*layers)
        self.colour = nn.Linear(c_in, len(COLOUR_CLASSES))
        self.shape = nn.Linear(c_in, len(SHAPE_CLASSES))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if images.shape[-2:] != (self.size, self.size):
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear",
                                   antialias=True, align_corners=False)
        h = self.features(images * 2 - 1).mean(dim=(2, 3))  # (B, C) global average pool
        return {"colour": self.colour(h), "shape": self.shape(h)}


def to_unit(images: Tensor) -> Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [0, 1]."""
    return images.permute(0, 3, 1, 2).float() / 255.0


def _augment(x: Tensor, cfg: JudgeConfig, g: torch.Generator) -> Tensor:
    b = x.shape[0]
    blur = torch.rand(b, generator=g) < cfg.blur_prob
    if blur.any():
        soft = F.avg_pool2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        x = x.clone()
        x[blur] = soft
    sigma = cfg.noise * torch.rand(b, 1, 1, 1, generator=g)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


def train_judge(data: ShapeData, cfg: JudgeConfig) -> Judge:
    """Cross-entropy on both heads; returns the judge in eval mode."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model = Judge(cfg.widths)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    batches = batch_indices(len(data), cfg.batch_size, cfg.steps, g)
    model.train()
    with stage("judge", cfg.steps) as bar:
        for step, idx in enumerate(batches):
            set_lr(opt, cfg.lr * warmup_cosine(step, cfg.steps, max(1, cfg.steps // 20)))
            x = _augment(to_unit(data.images[idx]), cfg, g)
            out = model(x)
            loss = F.cross_entropy(out["colour"], data.colour[idx]) + F.cross_entropy(
                out["shape"], data.shape[idx]
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(loss=loss.item())
    return model.eval()


@torch.no_grad()
def judge_images(judge: nn.Module, images: Tensor, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """(N, H, W, 3) uint8 -> predicted (colour, shape) class indices, (N,) each."""
    colours, shapes = [], []
    for chunk in images.split(batch_size):
        out = judge(to_unit(chunk))
        colours.append(out["colour"].argmax(-1))
        shapes.append(out["shape"].argmax(-1))
    return torch.cat(colours), torch.cat(shapes)


def judge_accuracy(judge: nn.Module, data: ShapeData) -> dict[str, float]:
    """Per-head accuracy on labelled images (the judge gate)."""
    colour, shape = judge_images(judge, data.images)
    return {
        "colour": (colour == data.colour).float().mean().item(),
        "shape": (shape == data.shape).float().mean().item(),
    }


def judge_words() -> dict[str, dict[str, list[str]]]:
    """The "words" entry of the judge's classifier.json: head -> class -> words naming it."""
    return {h: {c: list(ws) for c, ws in VOCABULARY.words[h].items()} for h in HEADS}


def save_judge(model: Judge, folder: Path, widths: tuple[int, ...]) -> Path:
    """classifier.json + fp16 safetensors, readable by rewards.classifier.load_classifier."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.half() if v.dtype == torch.float32 else v).contiguous()
        for k, v in model.state_dict().items()
    }
    save_file(state, str(folder / WEIGHTS))
    spec = {
        "class": "critic_unlearn.toyworld.judge:Judge",
        "kwargs": {"widths": list(widths), "size": model.size},
        "weights": WEIGHTS,
        "input": "(B, 3, H, W) float32 RGB in [0, 1]",
        "heads": {"colour": list(COLOUR_CLASSES), "shape": list(SHAPE_CLASSES)},
        "output": "logits",
        # how prompts name each class: the evaluation reads prompts with these (UA/IRA targets)
        "words": judge_words(),
    }
    (folder / "classifier.json").write_text(json.dumps(spec, indent=2) + "\n")
    return folder
