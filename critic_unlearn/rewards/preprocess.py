"""CLIP image preprocessing on batched tensors, following the model's own preprocess config.

open_clip's transforms work on one PIL image at a time; images here are already batched tensors
(often on a GPU, and for the critic inside the autograd graph), so the same resize / crop / pad /
normalise steps are done with `torch.nn.functional`. Pinned against open_clip's transform in a test.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

_MODES = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}


def _size(cfg: dict[str, Any]) -> tuple[int, int]:
    size = cfg.get("size", 224)
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _resize(x: Tensor, hw: tuple[int, int], interpolation: str) -> Tensor:
    if tuple(x.shape[-2:]) == hw:
        return x
    mode = _MODES.get(interpolation)
    if mode is None:
        raise ValueError(
            f"CLIP preprocess interpolation {interpolation!r} is not supported; use one of "
            f"{sorted(_MODES)} in the model's preprocess_cfg"
        )
    kw = {"antialias": True, "align_corners": False} if mode != "nearest" else {}
    return F.interpolate(x, size=hw, mode=mode, **kw).clamp(0.0, 1.0)


def _center_crop_or_pad(x: Tensor, hw: tuple[int, int], fill: float) -> Tensor:
    h, w = x.shape[-2:]
    th, tw = hw
    pad_h, pad_w = max(th - h, 0), max(tw - w, 0)
    if pad_h or pad_w:
        pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        x = F.pad(x, pads, value=fill)
        h, w = x.shape[-2:]
    top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    return x[..., top : top + th, left : left + tw]


def clip_pixels(images01: Tensor, cfg: dict[str, Any]) -> Tensor:
    """(B, 3, H, W) float in [0, 1] -> (B, 3, S, S) resized and normalised for the CLIP tower."""
    if images01.ndim != 4 or images01.shape[1] != 3:
        raise ValueError(f"expected images (B, 3, H, W), got shape {tuple(images01.shape)}")
    th, tw = _size(cfg)
    h, w = images01.shape[-2:]
    mode = cfg.get("resize_mode", "shortest")
    interp = cfg.get("interpolation", "bicubic")
    fill = float(cfg.get("fill_color", 0)) / 255.0
    if mode == "squash":
        x = _resize(images01, (th, tw), interp)
    elif mode in ("shortest", "longest"):
        pick = max if mode == "shortest" else min
        scale = pick(th / h, tw / w)
        if th == tw and mode == "shortest":  # torchvision Resize(int): short side exact
            short = th
            new = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
        else:
            new = (max(1, math.floor(h * scale + 0.5)), max(1, math.floor(w * scale + 0.5)))
        x = _center_crop_or_pad(_resize(images01, new, interp), (th, tw), fill)
    else:
        raise ValueError(
            f"CLIP preprocess resize_mode {mode!r} is not supported; use shortest, longest, squash"
        )
    mean = torch.tensor(cfg["mean"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def uint8_to_unit(images: Tensor) -> Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [0, 1]."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
        raise ValueError(
            f"expected images (B, H, W, 3) uint8, got shape {tuple(images.shape)} {images.dtype}"
        )
    return images.permute(0, 3, 1, 2).float().div_(255.0)
