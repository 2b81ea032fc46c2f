"""Small file helpers: atomic writes (temp name + rename) and image grids."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, fsync, then rename: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def run_folder_line(run_dir: str | Path) -> str:
    """"run folder: /absolute/path", and a warning when that is inside Ray's copy of a submitted
    job's working directory (`ray job submit --working-dir`, a relative runtime.run_dir)."""
    path = Path(run_dir).absolute()
    line = f"run folder: {path}"
    if "runtime_resources" in path.parts:
        line += (
            " (inside Ray's temporary copy of the job's working directory, which Ray may delete:"
            " to keep the run, set runtime.run_dir to an absolute path on storage that outlives"
            " the job)"
        )
    return line


def announce_run_folder(run_dir: str | Path) -> None:
    """First line of a run's stdout (a submitted job's log): where its folder is, absolute."""
    print(run_folder_line(run_dir), flush=True)


def image_grid(images: Tensor, cols: int | None = None, scale: int = 1) -> Image.Image:
    """(N, H, W, 3) uint8 -> one PIL image, `cols` wide, nearest-neighbour upscaled by `scale`."""
    n, h, w, _ = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch.zeros((rows * h, cols * w, 3), dtype=torch.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = images[i]
    img = Image.fromarray(grid.numpy())
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img
