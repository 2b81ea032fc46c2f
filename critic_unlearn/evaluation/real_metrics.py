"""The metrics a real model is evaluated with beside (or instead of) a judge: zero-shot CLIP UA /
IRA and FID / KID on retain prompts. Loaded before any image is sampled, so a missing model or
weights file stops `critic-unlearn eval` in seconds, not after the sampling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from critic_unlearn.config import RunConfig
from critic_unlearn.evaluation.fidelity import fidelity_report, load_inception
from critic_unlearn.evaluation.zero_shot import ZeroShotClassifier, load_zero_shot, zero_shot_report


@dataclass
class RealMetrics:
    zero_shot: ZeroShotClassifier | None  # None: eval.zero_shot not wanted
    inception: nn.Module | None  # None: eval.fidelity.enabled is false

    def add_to(self, result: dict[str, Any], cfg: RunConfig, base: Tensor, after: Tensor,
               texts: list[str], roles: list[str]) -> None:
        """Put "zero_shot" and "fidelity" into eval.json's `result`; without a judge the zero-shot
        UA / IRA become the run's UA / IRA (settings.ua_source says which it is)."""
        judged = cfg.eval.judge is not None
        if self.zero_shot is not None:
            zs = zero_shot_report(self.zero_shot, base, after, texts, roles)
            result["zero_shot"] = zs
            if not judged:
                result.update({k: zs[k] for k in ("ua", "ira", "base_ua", "base_ira")})
        source = "judge" if judged else "zero_shot" if self.zero_shot is not None else None
        result["settings"]["ua_source"] = source
        if self.inception is not None:
            keep = torch.tensor([r != "forget" for r in roles])
            result["fidelity"] = fidelity_report(self.inception, base[keep], after[keep],
                                                 cfg.eval.fidelity)


def load_real_metrics(cfg: RunConfig, device: torch.device | str) -> RealMetrics:
    f = cfg.eval.fidelity
    return RealMetrics(load_zero_shot(cfg, device),
                       load_inception(f.weights, device) if f.enabled else None)
