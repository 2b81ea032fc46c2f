"""Per-prompt reward standardisation with running statistics, as DDPO does it.

Semantics follow ddpo-pytorch's `PerPromptStatTracker` (kvablack/ddpo-pytorch, stat_tracking.py):
each prompt keeps its last `buffer_size` rewards; once it has `min_count` of them, its rewards are
standardised with that window's mean and std (ddof 0, + 1e-6), before that with the whole batch's.
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
        r = rewards.detach().to("cpu", torch.float64)
        batch_mean, batch_std = _mean_std(r)
        out = torch.empty_like(r)
        for prompt in dict.fromkeys(prompts):
            mask = torch.tensor([p == prompt for p in prompts])
            window = self._stats.setdefault(prompt, deque(maxlen=self.buffer_size))
            window.extend(r[mask].tolist())
            if len(window) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                mean, std = _mean_std(torch.tensor(list(window), dtype=torch.float64))
            out[mask] = (r[mask] - mean) / std
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
