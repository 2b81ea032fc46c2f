"""Reward models by name: `build_reward(cfg.reward, device)` returns a `RewardModel`.

A reward model scores decoded x0 images: `reward(images, prompts, roles) -> (B,) float32` with
images (B, H, W, 3) uint8, one prompt and one role ("forget" / "retain") per image. It returns
raw rewards; per-prompt standardisation (`build_stat_tracker`) is separate because its running
statistics belong to the learner's checkpoint, and raw rewards are what progress reports show.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from critic_unlearn.config import NudeNetRewardConfig, RewardConfig
from critic_unlearn.rewards.classifier import ClassifierReward, load_classifier
from critic_unlearn.rewards.clip_concept import ClipConceptReward
from critic_unlearn.rewards.normalization import PerPromptStatTracker
from critic_unlearn.rewards.openclip_loading import ClipLoadError, LoadedClip, load_open_clip
from critic_unlearn.rewards.prompts import Prompt, PromptSet, load_prompts


class RewardModel(Protocol):
    name: str

    def __call__(self, images: Tensor, prompts: list[str], roles: list[str]) -> Tensor: ...


def _clip_concept(cfg: RewardConfig, device: str | torch.device) -> RewardModel:
    clip = load_open_clip(cfg.clip_model, cfg.clip_pretrained, device=device)
    return ClipConceptReward(
        clip, cfg.prompts.concept, cfg.prompts.anchor, cfg.anchor_weight, cfg.clip_batch_size,
        anchor_substitutes=cfg.prompts.anchor_substitutes,
    )


def _classifier(cfg: RewardConfig, device: str | torch.device) -> RewardModel:
    c = cfg.classifier
    assert c is not None and c.path is not None and c.class_index is not None  # validated
    return ClassifierReward(
        load_classifier(c.path, device),
        c.class_index,
        head=c.head,
        output=c.output,
        mode=c.mode,
        image_size=c.image_size,
        batch_size=cfg.clip_batch_size,
        device=device,
    )


def _nudenet(cfg: RewardConfig, device: str | torch.device) -> RewardModel:
    # NudeNet is AGPL-3.0 (the [nudity] extra): imported here, only when it is asked for
    from critic_unlearn.rewards.nudity import NudityReward, load_detector

    settings = cfg.nudenet or NudeNetRewardConfig()
    detector = load_detector(settings.model, settings.resolution)
    clip = ClipConceptReward(  # the anchor and retain scores
        load_open_clip(cfg.clip_model, cfg.clip_pretrained, device=device),
        cfg.prompts.concept, cfg.prompts.anchor, cfg.anchor_weight, cfg.clip_batch_size,
    )
    return NudityReward(detector, clip, settings.classes, cfg.clip_batch_size)


REWARDS: dict[str, Callable[[RewardConfig, str | torch.device], RewardModel]] = {
    "clip_concept": _clip_concept,
    "classifier": _classifier,
    "nudenet": _nudenet,
}


def build_reward(cfg: RewardConfig, device: str | torch.device = "cpu") -> RewardModel:
    """The reward model named by `cfg.name`, loaded onto `device`."""
    if cfg.name not in REWARDS:
        raise ValueError(f"reward.name = {cfg.name!r} is unknown; use one of {sorted(REWARDS)}")
    return REWARDS[cfg.name](cfg, device)


def build_stat_tracker(cfg: RewardConfig) -> PerPromptStatTracker | None:
    """DDPO's per-prompt tracker when `reward.standardize` is on, else None."""
    if not cfg.standardize:
        return None
    return PerPromptStatTracker(cfg.standardize_buffer, cfg.standardize_min_count,
                                scale=cfg.standardize_scale)


__all__ = [
    "REWARDS",
    "ClassifierReward",
    "ClipConceptReward",
    "ClipLoadError",
    "LoadedClip",
    "PerPromptStatTracker",
    "Prompt",
    "PromptSet",
    "RewardModel",
    "build_reward",
    "build_stat_tracker",
    "load_open_clip",
    "load_prompts",
]
