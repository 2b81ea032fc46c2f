"""Pick the torch device from config ("auto": CUDA when present, else CPU)."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"runtime.device = {name!r} but no CUDA device is visible; use cpu or auto"
        )
    return torch.device(name)
