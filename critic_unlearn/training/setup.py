"""Build the pieces of a run from its config; shared by both runtimes (the builder)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from critic_unlearn.actors.actor import Actor
from critic_unlearn.config import RunConfig, dump_config, run_dir_url
from critic_unlearn.device import resolve_device
from critic_unlearn.diffusion.backbones import load_policy
from critic_unlearn.io_utils import atomic_write_text
from critic_unlearn.learner.critic import build_critic, text_embedder
from critic_unlearn.learner.critic_checkpoint import load_pretrained
from critic_unlearn.learner.esd import ESDLearner
from critic_unlearn.learner.learner import Learner
from critic_unlearn.learner.publisher import Publisher
from critic_unlearn.rewards import build_reward, build_stat_tracker
from critic_unlearn.rewards.openclip_loading import load_open_clip
from critic_unlearn.rewards.prompts import load_prompts
from critic_unlearn.training.storage import RunStore, staging_folder


def run_name(cfg: RunConfig) -> str:
    """`<scenario>-s<seed>-<time>` unless the config names the run (then it can resume)."""
    if cfg.runtime.run_name:
        return cfg.runtime.run_name
    return f"{cfg.scenario}-s{cfg.runtime.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(cfg: RunConfig) -> Path:
    """Create runs/<name>/ and write the resolved config there (every run does). For a URL
    runtime.run_dir this is the local staging copy, first made equal to the remote run so that a
    rerun on any node resumes from the remote checkpoint (training/storage.py)."""
    if run_dir_url(cfg.runtime.run_dir) is None:
        run_dir = Path(cfg.runtime.run_dir) / run_name(cfg)
    else:
        run_dir = staging_folder(cfg, run_name(cfg))
        RunStore.for_run(cfg, run_dir).pull()
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    return run_dir


def _components(cfg: RunConfig, device: torch.device, dtype: str | None = None):
    return load_policy(cfg.model, device=device, dtype=dtype)


def build_actor(cfg: RunConfig, actor_id: int, device: str | torch.device | None = None) -> Actor:
    dev = resolve_device(str(device) if device is not None else cfg.runtime.device)
    actor = Actor(
        cfg,
        actor_id,
        _components(cfg, dev),
        build_reward(cfg.reward, dev),
        load_prompts(cfg.reward.prompts),
        forget_fraction=cfg.reward.prompts.forget_fraction,
    )
    if cfg.actors.compile:
        # in place (nn.Module.compile), after the LoRA is attached: parameter names, peft's
        # adapter calls and `apply_weights`' in-place copies see the uncompiled module
        actor.c.denoiser.compile()
    return actor


def build_learner(
    cfg: RunConfig, publisher: Publisher | None = None, device: str | torch.device | None = None
) -> Learner:
    dev = resolve_device(str(device) if device is not None else cfg.runtime.device)
    torch.manual_seed(cfg.learner.seed)
    if cfg.learner.algorithm == "esd":
        return ESDLearner(cfg, _components(cfg, dev), publisher=publisher)
    critic = text = None
    # every arm's standardisation starts empty: a pretrained critic predicts raw rewards, so it
    # brings no reward statistics, and the critic and DDPO arms differ only in the critic
    tracker = build_stat_tracker(cfg.reward)
    if Learner.uses_critic(cfg):
        clip = load_open_clip(cfg.reward.clip_model, cfg.reward.clip_pretrained, dev)
        critic, text = build_critic(cfg.critic, clip), text_embedder(clip, cfg.critic)
        if cfg.critic.init is not None:
            if cfg.critic.init == "auto":
                raise ValueError(
                    "critic.init = 'auto' must be resolved before the learner is built "
                    "(training.critic_pretrain.resolve_critic_init)"
                )
            load_pretrained(cfg.critic.init, critic, cfg.critic)
    reward = build_reward(cfg.reward, dev) if Learner.needs_reward_model(cfg) else None
    return Learner(cfg, _components(cfg, dev), critic, text, publisher, reward_tracker=tracker,
                   reward_model=reward)


@dataclass
class TrainResult:
    run_dir: Path
    trajectories: int
    learner_steps: int
    version: int
    wall_s: float
    last_metrics: dict
    updates: int = 0  # policy updates (the budget); `version` is the last weights' label
