"""Critic pretraining: a reward predictor on base-policy noisy states, cached, loaded by a run."""

from __future__ import annotations

import json

import pytest
import torch

from critic_unlearn.config import load_config
from critic_unlearn.learner.checkpoint import load_checkpoint
from critic_unlearn.learner.diagnostics import ev_by_timestep
from critic_unlearn.training.critic_pretrain import (
    CHECKPOINT,
    pretrain_critic,
    resolve_critic_init,
)
from critic_unlearn.training.setup import build_learner
from tests.unit._clip_fixtures import tiny_clip_folder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip_folder(tmp_path_factory.mktemp("clip"), "resnet")


def config(model_dir, clip_dir, tmp_path, *extra):
    return load_config(None, [
        f"model.pretrained={model_dir}",
        f"reward.clip_model={clip_dir}",
        "reward.prompts.forget=[a red circle, a red square]",
        "reward.prompts.retain=[a blue circle, a blue square]",
        "reward.prompts.concept=red",
        "sampler.num_steps=4",
        "sampler.batch_size=4",
        "sampler.guidance_scale=3.0",
        "critic.hidden=16",
        "critic.timestep_dim=16",
        "critic.pretrain_trajectories=8",
        "critic.pretrain_epochs=2",
        "critic.pretrain_batch_size=8",
        f"critic.cache_dir={tmp_path / 'cache'}",
        "runtime.device=cpu",
        *extra,
    ])


def test_ev_by_timestep_by_hand() -> None:
    ts = torch.tensor([[900, 500], [900, 500], [900, 500]])
    r = torch.tensor([1.0, 2.0, 3.0])
    v = torch.tensor([[2.0, 1.0], [2.0, 2.0], [2.0, 3.0]])  # t=900 knows nothing, t=500 all
    assert ev_by_timestep(v, r, ts) == {900: 0.0, 500: 1.0}


def test_pretrain_writes_a_checkpoint_a_run_starts_from(tiny_model_dir, clip_dir, tmp_path):
    cfg = config(tiny_model_dir, clip_dir, tmp_path)
    r = pretrain_critic(cfg, tmp_path / "pre")
    meta = json.loads((tmp_path / "pre" / "pretrain.json").read_text())
    assert meta["trajectories"] == 8 and meta["states"] == 8 * 4 and meta["held_out"] == 2
    assert len(meta["ev_held_out"]) == 4 and len(meta["ev_train"]) == 4  # one per timestep
    assert (tmp_path / "pre" / "critic_ev.png").stat().st_size > 1000
    state = load_checkpoint(r.path)

    learner = build_learner(config(tiny_model_dir, clip_dir, tmp_path, f"critic.init={r.path}"))
    for name, p in learner.critic.state_dict().items():
        torch.testing.assert_close(p, state["critic"][name], rtol=0, atol=0)
    # the run's reward standardisation starts from the statistics the critic was fitted to
    assert learner.reward_tracker.state_dict() == state["reward_stats"]
    fresh = build_learner(cfg)
    assert any(not torch.equal(p, state["critic"][n])
               for n, p in fresh.critic.state_dict().items())

    wrong = config(tiny_model_dir, clip_dir, tmp_path, f"critic.init={r.path}", "critic.hidden=8")
    with pytest.raises(ValueError, match="pretrained with critic settings"):
        build_learner(wrong)
    with pytest.raises(FileNotFoundError, match="critic pretrain"):
        build_learner(config(tiny_model_dir, clip_dir, tmp_path, "critic.init=/nope.safetensors"))


def test_auto_init_pretrains_once_then_uses_the_cache(tiny_model_dir, clip_dir, tmp_path):
    cfg = config(tiny_model_dir, clip_dir, tmp_path, "critic.init=auto")
    first, info = resolve_critic_init(cfg)
    assert not info["cached"] and info["trajectories"] == 8
    assert first.critic.init.endswith(CHECKPOINT)
    mtime = (tmp_path / "cache").rglob(CHECKPOINT).__next__().stat().st_mtime_ns
    again, info2 = resolve_critic_init(cfg)
    assert info2["cached"] and again.critic.init == first.critic.init
    assert next((tmp_path / "cache").rglob(CHECKPOINT)).stat().st_mtime_ns == mtime
    # another critic design is another cache entry
    other, info3 = resolve_critic_init(
        config(tiny_model_dir, clip_dir, tmp_path, "critic.init=auto", "critic.input=x0_pred"))
    assert not info3["cached"] and other.critic.init != first.critic.init
    # critic off or no init: nothing to resolve
    assert resolve_critic_init(config(tiny_model_dir, clip_dir, tmp_path))[1] == {}


def test_pretraining_targets_are_standardised_batch_by_batch(tiny_model_dir, clip_dir, tmp_path):
    """Each reward is standardised by a window that holds it, so no target explodes when a
    prompt's later rewards are nearly constant (the final window would map the early ones to
    |z| ~ 1e5)."""
    from critic_unlearn.training.critic_pretrain import _targets
    from critic_unlearn.types import Batch

    cfg = config(tiny_model_dir, clip_dir, tmp_path, "learner.batch_size=4",
                 "learner.minibatch_size=4", "reward.standardize_buffer=4",
                 "reward.standardize_min_count=4")
    rewards = torch.tensor([0.0, 1.0, 0.0, 1.0] + [0.5] * 4 + [0.5 + 1e-6, 0.5, 0.5, 0.5])
    batch = Batch(latents=torch.zeros(12, 1), next_latents=torch.zeros(12, 1),
                  timesteps=torch.zeros(12, 1), steps=torch.zeros(12, 1),
                  log_probs=torch.zeros(12, 1), rewards=rewards,
                  versions=torch.zeros(12, dtype=torch.int64), prompts=["p"] * 12,
                  roles=["forget"] * 12, sampler=None)
    targets, tracker = _targets(cfg, batch)
    assert targets.abs().max() <= 3**0.5 + 1e-4  # sqrt(n - 1) for a window of n = 4
    assert tracker is not None and len(tracker.state_dict()["rewards"]["p"]) == 4
