"""The embedded toy world: synthetic shapes, a tiny text-to-image pipeline, a reward CLIP, a judge.

The world is built by `critic-unlearn toyworld build` (or `python -m critic_unlearn.toyworld build`)
and a built copy ships inside the package (`world/`), so a fresh install can unlearn at once.
Set CRITIC_UNLEARN_TOYWORLD_DIR to use a world built elsewhere.

Importing this module registers the world as the source "toyworld" of each kind in
`critic_unlearn.sources` (which imports it by name on first lookup): `model.pretrained`,
`reward.clip_model` and `eval.judge` = "toyworld" resolve to the world's folders, and the loaders
never import this package. This module imports no torch, so resolving is cheap.
"""

from __future__ import annotations

import os
from pathlib import Path

from critic_unlearn import sources

ENV_VAR = "CRITIC_UNLEARN_TOYWORLD_DIR"
PACKAGED_WORLD = Path(__file__).resolve().parent / "world"
CARD_JSON = "model_card.json"
TOYWORLD = "toyworld"  # the name configs use for the embedded world


class WorldMissingError(FileNotFoundError):
    """No built toy world where one was expected; the message says how to build one."""


def world_dir() -> Path:
    """The toy world folder: $CRITIC_UNLEARN_TOYWORLD_DIR if set, else the packaged world."""
    return _find_world(ENV_VAR, PACKAGED_WORLD, "toy world",
                       "toyworld build --out DIR` (about 40 minutes on 2 CPU cores)")


def _find_world(env_var: str, packaged: Path, what: str, build: str) -> Path:
    """$env_var if set, else `packaged`; a folder without the card raises with how to build."""
    override = os.environ.get(env_var)
    root = Path(override).expanduser() if override else packaged
    if not (root / CARD_JSON).is_file():
        where = f"${env_var} = {str(root)!r}" if override else f"the packaged world {str(root)!r}"
        raise WorldMissingError(
            f"no {what} found at {where} (it lacks {CARD_JSON}); build one with `critic-unlearn "
            f"{build} and set {env_var}=DIR"
        )
    return root


FLOW_ENV_VAR = "CRITIC_UNLEARN_TOYWORLD_FLOW_DIR"
PACKAGED_FLOW_WORLD = Path(__file__).resolve().parent / "world_flow"
TOYWORLD_FLOW = "toyworld-flow"  # the flow world's SD3-class pipeline, beside the UNet world's


def flow_world_dir() -> Path:
    """The flow toy world: $CRITIC_UNLEARN_TOYWORLD_FLOW_DIR if set, else the packaged one. It
    holds only its pipeline; VAE, text encoder, judge and reward CLIP are the UNet world's."""
    return _find_world(FLOW_ENV_VAR, PACKAGED_FLOW_WORLD, "flow toy world",
                       "toyworld build --backbone flow --out DIR`")


def flow_pipeline_dir() -> Path:
    """The flow world's StableDiffusion3Pipeline folder (`model.pretrained = toyworld-flow`)."""
    return flow_world_dir() / "pipeline"


def pipeline_dir() -> Path:
    """The text-to-image model in diffusers layout (`model.pretrained`)."""
    return world_dir() / "pipeline"


def reward_clip_dir() -> Path:
    """The reward CLIP folder that `reward.clip_model = "toyworld"` loads."""
    return world_dir() / "reward_clip"


def judge_dir() -> Path:
    """The judge (classifier.json + safetensors) used by the evaluation."""
    return world_dir() / "judge"


sources.register("model", TOYWORLD, pipeline_dir)
sources.register("reward_clip", TOYWORLD, reward_clip_dir)
sources.register("judge", TOYWORLD, judge_dir)
sources.register("model", TOYWORLD_FLOW, flow_pipeline_dir)

__all__ = ["ENV_VAR", "TOYWORLD", "WorldMissingError", "judge_dir", "pipeline_dir",
           "reward_clip_dir", "world_dir"]
