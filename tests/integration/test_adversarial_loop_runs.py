"""Adversarial prompts in the loop, end to end on tiny models, in both runtimes: with
attack.in_loop_every = 1 the learner attacks every new adapter, the pool reaches the actors with
the weights, their pool-prompt trajectories land in the replay carrying their soft tokens, and the
attack's cost is in metrics.jsonl (what bench/experiments/robustness.py's adversarial arm waits
for)."""

from __future__ import annotations

import uuid

import pytest
import redis as redis_py

from critic_unlearn.adversarial.packets import unfold_pool
from critic_unlearn.adversarial.pool import ID_PREFIX, SoftPromptPool
from critic_unlearn.codec import decode_trajectory
from critic_unlearn.replay import WeightStore
from critic_unlearn.runtime import train_ray
from critic_unlearn.runtime.local import train_local
from critic_unlearn.training.metrics import read_metrics
from tests.integration.test_local_trainer import config

# the Ray runtime's fixtures: an in-process cluster, a private Redis, its tiny run config
from tests.integration.test_runtime_local import local_ray, make_cfg, redis  # noqa: F401
from tests.unit._clip_fixtures import tiny_clip_folder

ATTACK = [
    "attack.in_loop_every=1",
    "attack.steps=1",
    "attack.batch_size=2",
    "attack.sample_steps=2",
    "attack.num_tokens=2",
    "attack.pool_size=2",
    "attack.pool_fraction=1.0",
]


def stored_trajectories(url: str, ns: str) -> list:
    """Every trajectory in the run's replay (shard 0), decoded by the codec."""
    r = redis_py.Redis.from_url(url)
    try:
        return [decode_trajectory(r.get(k)) for k in r.scan_iter(f"rb:{{{ns}:0}}:slot:*")]
    finally:
        r.close()


@pytest.mark.slow
def test_local_run_attacks_every_version_and_trains_on_pool_prompts(
    tiny_model_dir, redis_url, tmp_path
):
    ns = f"adv-{uuid.uuid4().hex[:8]}"
    clip = tiny_clip_folder(tmp_path / "clip")
    r = train_local(config(
        tiny_model_dir, clip, tmp_path / "runs", f"replay.url={redis_url}",
        f"replay.namespace={ns}", "critic.enabled=false", "learner.max_steps=2",
        "learner.checkpoint_every=100", "replay.sampling=recent", "replay.recent_window=4",
        "reward.prompts.forget_fraction=1.0", *ATTACK))
    assert r.version == 2
    rows = read_metrics(r.run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:  # one attack per version, its wall time and the pool's size
        assert row["adversarial/attack_s"] > 0 and 0 <= row["adversarial/concept_prob"] <= 1
    assert [row["adversarial/pool"] for row in rows] == [2.0, 2.0]  # 2 forget prompts, bounded
    # after the first attack every prompt is a pool prompt, and the learner draws from the
    # newest batch: the second update trains on pool prompts only
    assert [row["adversarial/batch_pool_share"] for row in rows] == [0.0, 1.0]
    assert rows[1]["adversarial/attack_s_total"] == pytest.approx(
        rows[0]["adversarial/attack_s"] + rows[1]["adversarial/attack_s"], abs=2e-3)

    trajs = stored_trajectories(redis_url, ns)
    soft = [t for t in trajs if t.prompt_id.startswith(ID_PREFIX)]
    assert soft, "no pool-prompt trajectory reached the replay"
    assert all(t.role == "forget" and t.version >= 1 for t in soft)  # after the first attack
    assert all(t.soft_tokens is not None and t.soft_tokens.shape[0] == 2 for t in soft)
    assert all(t.soft_tokens is None for t in trajs if not t.prompt_id.startswith(ID_PREFIX))
    assert not any(t.prompt_id.startswith(ID_PREFIX) for t in trajs if t.version == 0)

    # the checkpoint keeps the pool: resumed with no attack due, the actor's next batch still
    # draws from it, and the third update trains on pool prompts only
    more = train_local(config(
        tiny_model_dir, clip, tmp_path / "runs", f"replay.url={redis_url}",
        f"replay.namespace={ns}", "critic.enabled=false", "learner.max_steps=3",
        "learner.checkpoint_every=100", "replay.sampling=recent", "replay.recent_window=4",
        "reward.prompts.forget_fraction=1.0", *ATTACK, "attack.in_loop_every=5"))
    assert more.version == 3
    last = read_metrics(r.run_dir / "metrics.jsonl")[-1]
    assert last["step"] == 3 and "adversarial/attack_s" not in last
    assert last["adversarial/batch_pool_share"] == 1.0


@pytest.mark.slow
def test_ray_run_broadcasts_the_pool_with_the_weights(local_ray, make_cfg):  # noqa: F811
    """Under Ray the pool rides in the adapter blob (object store and durable copy alike)."""
    # staleness 1: the third update (at v2) can only draw what the actor sampled at v1 or later,
    # i.e. after the first attack's pool reached it; every such prompt is a pool prompt
    cfg = make_cfg("critic.enabled=false", "learner.max_steps=3", "actors.num=1",
                   "replay.max_staleness=1", "reward.prompts.forget_fraction=1.0", *ATTACK)
    r = train_ray(cfg)
    assert r.version == 3
    rows = read_metrics(r.run_dir / "metrics.jsonl")
    assert all(row["adversarial/attack_s"] > 0 for row in rows) and len(rows) == 3
    assert rows[-1]["adversarial/batch_pool_share"] == 1.0
    store = WeightStore(cfg.replay, "rt")
    try:
        packet = unfold_pool(store.get())
    finally:
        store.close()
    assert packet.version == 3 and "soft_prompt_pool" not in packet.state_dict
    assert len(SoftPromptPool.from_bytes(packet.pool)) == 2
    soft = [t for t in stored_trajectories(cfg.replay.url, "rt")
            if t.prompt_id.startswith(ID_PREFIX)]
    assert soft and all(t.version >= 1 and t.soft_tokens is not None for t in soft)
