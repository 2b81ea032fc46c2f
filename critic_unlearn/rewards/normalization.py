"""Per-prompt reward standardisation with running statistics, as DDPO does it.

Like ddpo-pytorch's `PerPromptStatTracker` (kvablack/ddpo-pytorch, stat_tracking.py), each prompt
keeps its last `buffer_size` rewards and is standardised with that window's mean and std (ddof 0,
+ 1e-6) once it has `min_count` of them. DDPO uses the batch's statistics before that and switches
at once, so every target of a prompt jumps when it reaches `min_count` (the critic regresses on
these targets and sees the jump as noise). Here a prompt's standardised reward moves there
gradually: with n rewards remembered (this batch's included), w = min(1, n / min_count) and

    z = w * (r - mean_prompt) / std_prompt + (1 - w) * (r - mean_all) / std_all,

where "all" is every remembered reward of every prompt (a running pool, steadier than one
batch). Both z-scores are bounded (a window of n holds no z-score above sqrt(n - 1)), so a batch
moves z by at most about (new rewards / min_count) * 2 sqrt(buffer_size).
The state is plain JSON-able data, so checkpoints need no pickle.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

EPS = 1e-6


def _mean_std(values: Tensor) -> tuple[Tensor, Tensor]:
    return values.mean(), values.std(correction=0) + EPS


class PerPromptStatTracker:
    """`update(prompts, rewards) -> standardised rewards`, remembering recent rewards per prompt."""

    def __init__(self, buffer_size: int = 16, min_count: int = 16) -> None:
        if buffer_size < 1 or min_count < 1:
            raise ValueError(
                f"buffer_size = {buffer_size} and min_count = {min_count} must both be >= 1"
            )
        self.buffer_size = buffer_size
        self.min_count = min_count
        self._stats: dict[str, deque[float]] = {}

    def update(self, prompts: Sequence[str], rewards: Tensor) -> Tensor:
        """Add the batch's rewards to each prompt's window; return (B,) standardised rewards."""
        if rewards.ndim != 1 or rewards.shape[0] != len(prompts):
            raise ValueError(
                f"expected one reward per prompt, got rewards {tuple(rewards.shape)} for "
                f"{len(prompts)} prompts"
            )
        self.add(prompts, rewards)
        return self.transform(prompts, rewards)

    def add(self, prompts: Sequence[str], rewards: Tensor) -> None:
        """Remember the rewards in each prompt's window (no standardisation)."""
        for prompt, value in zip(prompts, rewards.detach().double().cpu().tolist(), strict=True):
            self._stats.setdefault(prompt, deque(maxlen=self.buffer_size)).append(value)

    def transform(self, prompts: Sequence[str], rewards: Tensor) -> Tensor:
        """Standardise with the statistics remembered now, remembering nothing new."""
        if rewards.ndim != 1 or rewards.shape[0] != len(prompts):
            raise ValueError(
                f"expected one reward per prompt, got rewards {tuple(rewards.shape)} for "
                f"{len(prompts)} prompts"
            )
        r = rewards.detach().to("cpu", torch.float64)
        pool = torch.tensor([x for w in self._stats.values() for x in w], dtype=torch.float64)
        if pool.numel() == 0:
            raise ValueError("no rewards remembered yet: add() some before transform()")
        all_mean, all_std = pool.mean(), pool.std(correction=0)
        out = torch.empty_like(r)
        for prompt in dict.fromkeys(prompts):
            mask = torch.tensor([p == prompt for p in prompts])
            window = torch.tensor(list(self._stats.get(prompt, ())), dtype=torch.float64)
            w = min(1.0, len(window) / self.min_count)
            z_all = (r[mask] - all_mean) / (all_std + EPS)
            if len(window) == 0:
                out[mask] = z_all
                continue
            z_prompt = (r[mask] - window.mean()) / (window.std(correction=0) + EPS)
            out[mask] = w * z_prompt + (1 - w) * z_all
        return out.to(rewards.dtype).to(rewards.device)

    def stats(self) -> dict[str, dict[str, float]]:
        """Per prompt: mean, std and count of the remembered rewards (for logging)."""
        result = {}
        for prompt, window in self._stats.items():
            mean, std = _mean_std(torch.tensor(list(window), dtype=torch.float64))
            result[prompt] = {"mean": float(mean), "std": float(std - EPS), "count": len(window)}
        return result

    def state_dict(self) -> dict[str, Any]:
        return {
            "buffer_size": self.buffer_size,
            "min_count": self.min_count,
            "rewards": {p: list(w) for p, w in self._stats.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer_size = int(state["buffer_size"])
        self.min_count = int(state["min_count"])
        self._stats = {
            p: deque((float(x) for x in w), maxlen=self.buffer_size)
            for p, w in state["rewards"].items()
        }
