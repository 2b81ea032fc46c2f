"""Training utilities shared by the toy world's models: schedules, batches, EMA, fp16 saves."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """Learning-rate factor: linear warmup, then cosine down to `floor` of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def batch_indices(n: int, batch: int, steps: int, generator: torch.Generator) -> list[Tensor]:
    """`steps` batches of `batch` indices: epochs of fresh permutations, reproducible."""
    out: list[Tensor] = []
    perm = torch.randperm(n, generator=generator)
    pos = 0
    for _ in range(steps):
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=generator), 0
        out.append(perm[pos : pos + batch])
        pos += batch
    return out


class EMA:
    """An exponential moving average copy of a module (decay warms up from ~0.9).

    Diffusion models sample far better from averaged weights; the averaged copy is what is
    evaluated during training and saved at the end.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.steps = 0
        self.model = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for avg, p in zip(self.model.parameters(), module.parameters(), strict=True):
            avg.lerp_(p.detach(), 1 - d)
        for avg, b in zip(self.model.buffers(), module.buffers(), strict=True):
            avg.copy_(b)


def to_fp16_file(path: Path) -> None:
    """Rewrite a safetensors file with float tensors in fp16, keeping its metadata (halves size).

    The configs beside it still say float32, so loaders build float32 modules and upcast.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    half = {k: v.half() if v.dtype == torch.float32 else v for k, v in tensors.items()}
    save_file({k: v.contiguous() for k, v in half.items()}, str(path), metadata=metadata)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
