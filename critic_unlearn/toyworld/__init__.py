"""The embedded toy world: synthetic shapes, a tiny text-to-image pipeline, a reward CLIP, a judge.

The world is built by `critic-unlearn toyworld build` (or `python -m critic_unlearn.toyworld.build`)
and a built copy ships inside the package (`world/`), so a fresh install can unlearn at once.
Set CRITIC_UNLEARN_TOYWORLD_DIR to use a world built elsewhere. This module imports no torch:
`reward.clip_model = "toyworld"` and `model.pretrained = "toyworld"` resolve through it cheaply.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "CRITIC_UNLEARN_TOYWORLD_DIR"
PACKAGED_WORLD = Path(__file__).resolve().parent / "world"
CARD_JSON = "model_card.json"
TOYWORLD = "toyworld"  # the name configs use for the embedded world


class WorldMissingError(FileNotFoundError):
    """No built toy world where one was expected; the message says how to build one."""


def world_dir() -> Path:
    """The toy world folder: $CRITIC_UNLEARN_TOYWORLD_DIR if set, else the packaged world."""
    override = os.environ.get(ENV_VAR)
    root = Path(override).expanduser() if override else PACKAGED_WORLD
    if not (root / CARD_JSON).is_file():
        where = f"${ENV_VAR} = {str(root)!r}" if override else f"the packaged world {str(root)!r}"
        raise WorldMissingError(
            f"no toy world found at {where} (it lacks {CARD_JSON}); build one with `critic-unlearn "
            f"toyworld build --out DIR` (about 40 minutes on 2 CPU cores) and set {ENV_VAR}=DIR"
        )
    return root


def pipeline_dir() -> Path:
    """The text-to-image model in diffusers layout (`model.pretrained`)."""
    return world_dir() / "pipeline"


def resolve_pretrained(name: str) -> str:
    """`model.pretrained`: "toyworld" -> the world's pipeline folder; anything else unchanged."""
    return str(pipeline_dir()) if name == TOYWORLD else name


def reward_clip_dir() -> Path:
    """The reward CLIP folder that `reward.clip_model = "toyworld"` loads."""
    return world_dir() / "reward_clip"


def judge_dir() -> Path:
    """The judge (classifier.json + safetensors) used by the evaluation."""
    return world_dir() / "judge"


__all__ = ["ENV_VAR", "TOYWORLD", "WorldMissingError", "judge_dir", "pipeline_dir",
           "resolve_pretrained", "reward_clip_dir", "world_dir"]
