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

`scale = "pooled"` divides every prompt by one std, that of all remembered rewards, and keeps
the per-prompt mean blend: z = (r - mean_blend_p) / std_all. The learner normalises advantages
over the batch anyway, so one shared scale changes only how prompts weigh against each other;
a prompt's own std from a few near-equal rewards would multiply the critic's error (which the
values carry, see below) by up to 1 / 1e-6.

For fixed statistics z is affine in r, z = scale_p * r + shift_p (`affine`): the learner maps its
critic's values, which predict the raw reward, through the same affine as the rewards, so values
and standardised rewards share one scale while the critic's own target never moves.

A replay buffer hands the learner the same trajectory several times (draws with replacement,
`samples_per_insert` > 1): with `ids`, each trajectory enters the statistics once, however often
it is drawn. The state is plain JSON-able data, so checkpoints need no pickle.
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


def _check(prompts: Sequence[str], rewards: Tensor) -> None:
    if rewards.ndim != 1 or rewards.shape[0] != len(prompts):
        raise ValueError(
            f"expected one reward per prompt, got rewards {tuple(rewards.shape)} for "
            f"{len(prompts)} prompts"
        )


class PerPromptStatTracker:
    """`update(prompts, rewards) -> standardised rewards`, remembering recent rewards per prompt."""

    def __init__(self, buffer_size: int = 16, min_count: int = 16, seen_size: int = 8192,
                 scale: str = "prompt") -> None:
        if buffer_size < 1 or min_count < 1:
            raise ValueError(
                f"buffer_size = {buffer_size} and min_count = {min_count} must both be >= 1"
            )
        if scale not in ("prompt", "pooled"):
            raise ValueError(f"scale = {scale!r}: use 'prompt' or 'pooled'")
        self.buffer_size = buffer_size
        self.min_count = min_count
        self.scale = scale
        self._stats: dict[str, deque[float]] = {}
        # ids of the trajectories already counted, oldest first; bounded, since a replay buffer
        # can only hand back trajectories it still holds
        self._seen: deque[str] = deque(maxlen=seen_size)
        self._seen_set: set[str] = set()

    def update(
        self, prompts: Sequence[str], rewards: Tensor, ids: Sequence[str] | None = None
    ) -> Tensor:
        """Add the batch's rewards to each prompt's window; return (B,) standardised rewards."""
        _check(prompts, rewards)
        self.add(prompts, rewards, ids)
        return self.transform(prompts, rewards)

    def add(
        self, prompts: Sequence[str], rewards: Tensor, ids: Sequence[str] | None = None
    ) -> None:
        """Remember the rewards in each prompt's window (no standardisation). With `ids` (one per
        reward), a trajectory counted before, or twice in this batch, is not counted again."""
        _check(prompts, rewards)
        if ids is not None and len(ids) != len(prompts):
            raise ValueError(f"got {len(ids)} trajectory ids for {len(prompts)} rewards")
        values = rewards.detach().double().cpu().tolist()
        for i, (prompt, value) in enumerate(zip(prompts, values, strict=True)):
            if ids is not None:
                if ids[i] in self._seen_set:
                    continue
                if len(self._seen) == self._seen.maxlen:
                    self._seen_set.discard(self._seen[0])
                self._seen.append(ids[i])
                self._seen_set.add(ids[i])
            self._stats.setdefault(prompt, deque(maxlen=self.buffer_size)).append(value)

    def affine(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """(scale, shift), each (B,) float64: the current standardisation is z = scale * r +
        shift for every prompt (the blend of per-prompt and pooled z-scores is affine in r)."""
        pool = torch.tensor([x for w in self._stats.values() for x in w], dtype=torch.float64)
        if pool.numel() == 0:
            raise ValueError("no rewards remembered yet: add() some before transform()")
        all_mean, all_sd = pool.mean(), pool.std(correction=0) + EPS
        per_prompt = {}
        for prompt in dict.fromkeys(prompts):
            window = torch.tensor(list(self._stats.get(prompt, ())), dtype=torch.float64)
            w = min(1.0, len(window) / self.min_count)
            if self.scale == "pooled":  # (r - blended mean) / pooled std
                mean = w * window.mean() + (1 - w) * all_mean if len(window) else all_mean
                per_prompt[prompt] = (float(1 / all_sd), float(-mean / all_sd))
                continue
            scale, shift = (1 - w) / all_sd, -(1 - w) * all_mean / all_sd
            if len(window):
                sd = window.std(correction=0) + EPS
                scale, shift = scale + w / sd, shift - w * window.mean() / sd
            per_prompt[prompt] = (float(scale), float(shift))
        scale = torch.tensor([per_prompt[p][0] for p in prompts], dtype=torch.float64)
        shift = torch.tensor([per_prompt[p][1] for p in prompts], dtype=torch.float64)
        return scale, shift

    def transform(self, prompts: Sequence[str], rewards: Tensor) -> Tensor:
        """Standardise with the statistics remembered now, remembering nothing new."""
        _check(prompts, rewards)
        scale, shift = self.affine(prompts)
        out = scale * rewards.detach().to("cpu", torch.float64) + shift
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
            "scale": self.scale,
            "rewards": {p: list(w) for p, w in self._stats.items()},
            "seen": list(self._seen),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer_size = int(state["buffer_size"])
        self.min_count = int(state["min_count"])
        self.scale = str(state.get("scale", "prompt"))  # checkpoints before the setting: prompt
        self._stats = {
            p: deque((float(x) for x in w), maxlen=self.buffer_size)
            for p, w in state["rewards"].items()
        }
        self._seen = deque(state.get("seen", []), maxlen=self._seen.maxlen)
        self._seen_set = set(self._seen)
