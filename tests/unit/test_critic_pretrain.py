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
    # the critic predicts raw rewards: it brings no reward statistics, so the run's
    # standardisation starts empty, exactly as a DDPO run's does
    assert learner.reward_tracker.state_dict()["rewards"] == {}
    assert "reward_stats" not in state
    # the fixed affine of its targets: the training split's reward mean and std
    shift, scale = meta["target_affine"]
    assert scale > 0 and float(learner.critic.reward_scale) == pytest.approx(scale, rel=1e-5)
    assert set(meta["ev_held_out_within_prompt"]) == set(meta["ev_held_out"])
    assert set(meta["ev_reward_feature_held_out"]) == set(meta["ev_held_out"])
    assert meta["cost_ms_per_state"] > 0
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


def test_within_prompt_ev_removes_what_the_prompt_alone_explains() -> None:
    """Values equal to each prompt's mean reward explain the raw reward's between-prompt
    variance and nothing within a prompt; the report says both."""
    from critic_unlearn.training.critic_pretrain import ev_report

    prompts = ["a", "a", "b", "b"]
    r = torch.tensor([0.0, 2.0, 10.0, 12.0])
    v = torch.tensor([[1.0], [1.0], [11.0], [11.0]])
    raw, within = ev_report(v, r, torch.full((4, 1), 500), prompts)
    assert raw["500"] > 0.9 and within["500"] == pytest.approx(0.0, abs=1e-6)
    raw, within = ev_report(r[:, None].clone(), r, torch.full((4, 1), 500), prompts)
    assert within["500"] == pytest.approx(1.0)
    # a prompt seen once adds no variance to explain and no blow-up (no per-prompt std):
    # r - m = [-1, 1, 0], v - m = [0, 0, 1]: 1 - Var([-1, 1, -1]) / Var([-1, 1, 0]) = -1/3
    _, within = ev_report(v[:3], r[:3], torch.full((3, 1), 500), prompts[:3])
    assert within["500"] == pytest.approx(-1 / 3, abs=1e-4)


def test_the_cache_key_follows_every_setting_the_fit_uses(tiny_model_dir, clip_dir, tmp_path):
    from critic_unlearn.training.critic_pretrain import pretrain_key

    base = pretrain_key(config(tiny_model_dir, clip_dir, tmp_path))
    assert pretrain_key(config(tiny_model_dir, clip_dir, tmp_path,
                               "learner.max_grad_norm=0.5")) != base
    assert pretrain_key(config(tiny_model_dir, clip_dir, tmp_path,
                               "critic.reward_feature=false")) != base
    # what the fit does not read leaves the cache entry alone
    assert pretrain_key(config(tiny_model_dir, clip_dir, tmp_path,
                               "critic.warmup_steps=3")) == base


def test_a_reader_never_finds_the_checkpoint_without_its_meta(tmp_path, monkeypatch):
    """`critic.init = auto` takes the checkpoint's presence as "done" and then reads
    pretrain.json: a crash between the two writes must not leave the checkpoint alone."""
    from critic_unlearn.training import critic_pretrain

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(critic_pretrain, "atomic_write_text", crash)
    meta = {"ev_held_out_within_prompt": {"1": 0.5}, "ev_train_within_prompt": {"1": 0.5}}
    with pytest.raises(OSError, match="disk full"):
        critic_pretrain.write_pretrained(tmp_path / "pre", {"meta": "{}"}, meta)
    assert not (tmp_path / "pre" / CHECKPOINT).exists()
