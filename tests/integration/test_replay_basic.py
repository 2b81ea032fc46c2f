"""Round trip, capacity, staleness, sampling modes, priorities, namespaces, corruption."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
import torch

from critic_unlearn.codec import encode_trajectory
from critic_unlearn.replay import ReplaySampler, ReplayWriter
from critic_unlearn.replay.shards import open_shards


def _same(a, b) -> None:
    for name in ("latents", "positions", "steps", "timesteps", "log_probs"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x.view(torch.uint8), y.view(torch.uint8)), name
    assert (a.prompt_id, a.prompt, a.role, a.reward, a.version, a.actor_id, a.seed, a.sampler) == (
        b.prompt_id, b.prompt, b.role, b.reward, b.version, b.actor_id, b.seed, b.sampler)


def test_round_trip_is_bit_identical_with_metadata(replay_cfg, make_traj):
    cfg = replay_cfg()
    traj = make_traj(7, version=3, actor=2, role="retain")
    with ReplayWriter(cfg) as w, ReplaySampler(cfg) as s:
        ref = w.write(traj, priority=2.5)
        (rec,) = s.sample(1, min_version=0)
        payload = encode_trajectory(traj)  # bytes in == bytes stored, exactly
        ref2 = w.write_bytes(payload, version=3, reward=traj.reward, role="retain", actor=2)
        raw = s.shards[0].conn.redis.get(s.shards[0].keys.slot(ref2.slot))
    _same(rec.trajectory, traj)
    assert raw == payload
    m = rec.meta
    assert (m.shard, m.slot, m.id) == (ref.shard, ref.slot, ref.id)
    assert (m.version, m.reward, m.role, m.actor, m.times_sampled, m.priority) == (
        3, traj.reward, "retain", 2, 1, 2.5)


def test_capacity_keeps_exactly_the_newest(replay_cfg, make_traj):
    cfg = replay_cfg(capacity=8)
    with ReplayWriter(cfg) as w, ReplaySampler(cfg) as s:
        for i in range(24):
            w.write(make_traj(i, version=i))
        assert s.size() == 8
        seen = {r.trajectory.prompt_id for r in s.sample(200, min_version=0)}
        stats = s.stats()
    assert seen == {f"traj-{i}" for i in range(16, 24)}
    assert stats["replay/server_inserted"] == 24
    assert stats["replay/server_evictions"] == 16
    assert w.stats()["replay/evictions"] == 16


def test_min_version_never_returns_older_records(replay_cfg, make_traj):
    cfg = replay_cfg(capacity=64)
    with ReplayWriter(cfg) as w, ReplaySampler(cfg) as s:
        for i in range(40):
            w.write(make_traj(i, version=i // 4))  # versions 0..9
        for mode_cfg in (cfg, cfg.model_copy(update={"sampling": "recent", "recent_window": 30}),
                         cfg.model_copy(update={"sampling": "prioritized"})):
            with ReplaySampler(mode_cfg) as sm:
                recs = sm.sample(300, min_version=9 - 2)
            assert min(r.meta.version for r in recs) >= 7
            assert {r.meta.version for r in recs} == {7, 8, 9}
        assert s.min_version_for(9) == 9 - cfg.max_staleness


def test_no_fresh_record_times_out_clearly(replay_cfg, make_traj):
    cfg = replay_cfg()
    with ReplayWriter(cfg) as w, ReplaySampler(cfg) as s:
        w.write(make_traj(0, version=1))
        with pytest.raises(TimeoutError, match=r"no record has version >= 5 \(newest is 1"):
            s.sample(1, min_version=5, timeout_s=0.2)


def test_recent_window_samples_only_newest(replay_cfg, make_traj):
    cfg = replay_cfg(capacity=32, sampling="recent", recent_window=5)
    with ReplayWriter(cfg) as w, ReplaySampler(cfg) as s:
        for i in range(20):
            w.write(make_traj(i))
        ids = {r.meta.id for r in s.sample(200, min_version=0)}
    assert ids == set(range(16, 21))


def test_prioritized_follows_updated_priorities(replay_cfg, make_traj):
    cfg = replay_cfg(capacity=8, sampling="prioritized", priority_exponent=1.0)
    with ReplayWriter(cfg) as w, ReplaySampler(cfg) as s:
        for i in range(4):
            w.write(make_traj(i), priority=1.0)
        recs = s.sample(200, min_version=0)  # with replacement: draw enough to see all 4
        by_id = {r.meta.id: r for r in recs}
        assert len(by_id) == 4
        first = next(iter(by_id.values()))
        assert s.update_priorities([first], [0.0]) == 1
        others = [r for i, r in by_id.items() if i != first.meta.id]
        assert s.update_priorities(others, [1.0] * len(others)) == len(others)
        counts = Counter(r.meta.id for r in s.sample(400, min_version=0))
        assert first.meta.id not in counts
        # new inserts default to the highest priority seen, so they get drawn
        s.update_priorities([others[0]], [50.0])
        ref = w.write(make_traj(9))
        counts = Counter(r.meta.id for r in s.sample(400, min_version=0))
        assert counts[ref.id] > 100 and counts[others[0].meta.id] > 100
        assert all(r.meta.probability > 0 for r in s.sample(5, min_version=0))


def test_times_sampled_counts_draws(replay_cfg, make_traj):
    cfg = replay_cfg()
    with ReplayWriter(cfg) as w, ReplaySampler(cfg) as s:
        w.write(make_traj(0))
        recs = s.sample(5, min_version=0)
    assert [r.meta.times_sampled for r in recs] == [1, 2, 3, 4, 5]


def test_namespaces_are_isolated_and_clear_is_own_only(replay_cfg, make_traj):
    a, b = replay_cfg(), replay_cfg()
    with ReplayWriter(a) as wa, ReplayWriter(b) as wb, ReplaySampler(a) as sa, \
            ReplaySampler(b) as sb:
        for i in range(3):
            wa.write(make_traj(i))
        wb.write(make_traj(100))
        assert (sa.size(), sb.size()) == (3, 1)
        assert {r.trajectory.prompt_id for r in sb.sample(20, min_version=0)} == {"traj-100"}
        assert sa.clear() > 0
        assert (sa.size(), sb.size()) == (0, 1)
        r = sa.shards[0].conn.redis
        assert not list(r.scan_iter(match=sa.shards[0].keys.pattern))
        assert list(r.scan_iter(match=sb.shards[0].keys.pattern))


def test_bad_namespace_is_refused(replay_cfg):
    with pytest.raises(ValueError, match=r"replay.namespace = 'a:b\*' is not allowed"):
        open_shards(replay_cfg(namespace="a:b*"))


def test_corrupt_payload_is_skipped_counted_and_logged(replay_cfg, make_traj, caplog):
    cfg = replay_cfg()
    with ReplayWriter(cfg) as w, ReplaySampler(cfg) as s:
        bad = w.write(make_traj(0))
        w.write(make_traj(1))
        key = s.shards[0].keys.slot(bad.slot)
        s.shards[0].conn.redis.set(key, b"\x00garbage" * 10)
        with caplog.at_level(logging.WARNING, logger="critic_unlearn.replay"):
            recs = s.sample(10, min_version=0)
        stats = s.stats()
    assert {r.trajectory.prompt_id for r in recs} == {"traj-1"}
    assert stats["replay/corrupt_skipped"] == 1
    assert stats["replay/server_corrupt"] == 1
    assert stats["replay/server_present"] == 1
    assert any(key in m for m in caplog.messages)


def test_metadata_that_disagrees_with_payload_counts_as_corrupt(replay_cfg, make_traj):
    cfg = replay_cfg()
    with ReplayWriter(cfg) as w, ReplaySampler(cfg) as s:
        w.write_bytes(encode_trajectory(make_traj(0, version=1)), version=2, reward=0.0,
                      role="forget", actor=0)
        w.write(make_traj(1))
        assert {r.trajectory.prompt_id for r in s.sample(5, min_version=0)} == {"traj-1"}
        assert s.stats()["replay/corrupt_skipped"] == 1


def test_sharding_by_actor_and_proportional_draws(private_server, replay_cfg, make_traj):
    other = private_server()
    cfg = replay_cfg(capacity=32, shards=[other.url])
    with ReplayWriter(cfg) as w, ReplaySampler(cfg) as s:
        for i in range(12):
            ref = w.write(make_traj(i, actor=i % 4 if i < 8 else 1))
            assert ref.shard == (i % 4 if i < 8 else 1) % 2
        assert [sh.size() for sh in s.shards] == [4, 8]
        shards = Counter(r.meta.shard for r in s.sample(600, min_version=0))
    assert 120 < shards[0] < 280 and shards[0] + shards[1] == 600


def test_a_seeded_sampler_draws_the_same_records_each_time(private_server, replay_cfg, make_traj):
    """Which records a draw picks comes from the sampler's seed (the learner passes
    learner.seed), so a run whose calls come in a fixed order is reproducible."""
    other = private_server()

    def draws(seed: int) -> list[str]:
        cfg = replay_cfg(capacity=32, shards=[other.url])
        with ReplayWriter(cfg) as w, ReplaySampler(cfg, seed=seed) as s:
            for i in range(12):
                w.write(make_traj(i, actor=i % 3))
            return [r.trajectory.prompt_id for r in s.sample(40, min_version=0)]

    first = draws(3)
    assert draws(3) == first
    assert draws(4) != first  # 12 records, 40 draws: another seed differs


def test_a_restored_sampler_goes_on_with_its_draws_not_the_run_start_sequence(
    replay_cfg, make_traj
):
    """The draws' random state goes into learner checkpoints: a sampler restored from it draws
    what the saved one would have drawn next, not what a fresh one draws at the run's start."""
    cfg = replay_cfg(capacity=32)
    with ReplayWriter(cfg) as w:
        for i in range(32):
            w.write(make_traj(i))

    def ids(s: ReplaySampler) -> list[str]:
        return [r.trajectory.prompt_id for r in s.sample(12, min_version=0)]

    with ReplaySampler(cfg, seed=5) as first:
        start = ids(first)
        first.rng.gauss(0.0, 1.0)  # leaves a second normal pending: part of the state too
        saved = first.rng_state()
        pending = first.rng.getstate()
        after = ids(first)
    with ReplaySampler(cfg, seed=5) as restored:
        restored.set_rng_state(saved)
        assert restored.rng.getstate() == pending
        assert ids(restored) == after
    assert after != start
