"""The limiter's two questions asked from outside the writes and draws, answered in Lua.

`ReplayWriter.has_room / wait_for_room` (may an actor sample a batch now?) and
`ReplaySampler.release_if_all_stale` (the deadlock breaker): exact boundaries, and that they
agree with what `write` and `sample` themselves then do.
"""

from __future__ import annotations

import threading
import time

import pytest

from critic_unlearn.replay import ReplaySampler, ReplayTimeout, ReplayWriter, StaleRelease


def test_room_is_granted_and_refused_at_the_exact_boundary(replay_cfg, make_traj):
    # spi 2, min size 4, error buffer 4: room for k while (inserts + k) * 2 - samples <= 12
    cfg = replay_cfg(capacity=64, samples_per_insert=2.0, min_size_to_sample=4, error_buffer=4.0)
    with ReplayWriter(cfg) as w, ReplaySampler(cfg) as s:
        for i in range(4):
            w.write(make_traj(i), timeout_s=0.1)
        assert s.rate_limiter.counts() == {"inserts": 4, "samples": 0}
        assert w.has_room(2)  # 6 * 2 - 0 = 12: on the top edge
        assert not w.has_room(3)  # 7 * 2 - 0 = 14
        s.sample(1, min_version=0, timeout_s=0.1)
        assert not w.has_room(3)  # 14 - 1 = 13
        s.sample(1, min_version=0, timeout_s=0.1)
        assert w.has_room(3)  # 14 - 2 = 12
        # a batch wider than the band (2 * 4 / 2 = 4 records) waits for the band's worth only
        assert not w.has_room(4)  # 8 * 2 - 2 = 14
        s.sample(2, min_version=0, timeout_s=0.1)
        assert w.has_room(4) and w.has_room(100)  # 8 * 2 - 4 = 12
        # the insert script agrees: four more records fit, the fifth is refused
        for i in range(4, 8):
            w.write(make_traj(i), timeout_s=0.1)
        assert not w.has_room(1)  # 9 * 2 - 4 = 14
        with pytest.raises(ReplayTimeout, match="rate limiter holds actor 0"):
            w.write(make_traj(8), timeout_s=0.1)
        with pytest.raises(ValueError, match="n = 0 records"):
            w.has_room(0)


def test_a_half_drawn_batch_that_times_out_gives_its_draws_back(replay_cfg, make_traj):
    # spi 1, min size 4, error buffer 4: 6 inserts grant 6 - (4 - 4) = 6 samples, not 8
    cfg = replay_cfg(capacity=64, samples_per_insert=1.0, min_size_to_sample=4, error_buffer=4.0)
    with ReplayWriter(cfg) as w, ReplaySampler(cfg) as s:
        for i in range(6):
            w.write(make_traj(i), timeout_s=0.1)
        with pytest.raises(ReplayTimeout, match="with 6 drawn"):
            s.sample(8, min_version=0, timeout_s=0.2)
        assert s.rate_limiter.counts() == {"inserts": 6, "samples": 0}  # none were spent
        assert len(s.sample(6, min_version=0, timeout_s=0.1)) == 6  # still there to draw


def test_below_min_size_room_counts_stored_records_not_counters(replay_cfg):
    cfg = replay_cfg(capacity=64, samples_per_insert=1.0, min_size_to_sample=4, error_buffer=8.0)
    with ReplayWriter(cfg) as w, ReplaySampler(cfg) as s:
        s.rate_limiter.load_state_dict({"inserts": 100, "samples": 0})  # far above the top
        assert w.has_room(4)  # 0 stored + 4 <= min_size: inserts are always allowed there
        assert not w.has_room(5)  # past min_size the counters decide: 105 - 0 > 12


def test_room_counts_records_on_every_shard(replay_cfg, redis_url, make_traj):
    cfg = replay_cfg(capacity=64, shards=[redis_url], samples_per_insert=1.0,
                     min_size_to_sample=3, error_buffer=1.0)
    with ReplayWriter(cfg) as w, ReplaySampler(cfg) as s:
        w.write(make_traj(0, actor=1), timeout_s=0.1)  # on shard 1
        w.write(make_traj(1, actor=1), timeout_s=0.1)
        assert s.size() == 2 and w.shards[0].size() == 0
        assert w.has_room(1)  # 2 + 1 <= 3
        s.rate_limiter.load_state_dict({"inserts": 10, "samples": 0})
        assert not w.has_room(2)  # 2 + 2 > 3 and 12 - 0 > 3 + 1


def test_wait_for_room_polls_until_the_learner_samples_or_gives_up(replay_cfg, make_traj):
    cfg = replay_cfg(capacity=64, samples_per_insert=1.0, min_size_to_sample=2, error_buffer=2.0)
    with ReplayWriter(cfg) as w, ReplaySampler(cfg) as s:
        for i in range(4):
            w.write(make_traj(i), timeout_s=0.1)  # diff 4 = top: no room for one more
        polls: list[float] = []
        t0 = time.monotonic()
        assert not w.wait_for_room(1, 0.3, on_poll=lambda: polls.append(time.monotonic()))
        waited = time.monotonic() - t0
        assert 0.3 <= waited < 2.0 and len(polls) >= 3  # checked repeatedly, then gave up

        sample_began: list[float] = []

        def learner() -> None:
            time.sleep(0.3)  # give the writer time to wait first
            sample_began.append(time.monotonic())
            s.sample(1, min_version=0, timeout_s=30.0)

        t = threading.Thread(target=learner)
        t.start()
        got = w.wait_for_room(1, 30.0)
        returned = time.monotonic()
        t.join()
        assert got and returned >= sample_began[0]  # room only once the learner sampled
        assert w.wait_for_room(1, 0.0)  # room now: answered at once


def _fill_to_the_top(w: ReplayWriter, make_traj, versions: list[int]) -> None:
    for i, v in enumerate(versions):
        w.write(make_traj(i, version=v), timeout_s=0.1)


def test_release_when_every_record_is_stale_and_actors_are_blocked(replay_cfg, make_traj):
    # spi 1, min size 2, error buffer 2: diff = inserts - samples must stay in [0, 4]
    cfg = replay_cfg(capacity=64, samples_per_insert=1.0, min_size_to_sample=2, error_buffer=2.0)
    with ReplayWriter(cfg) as w, ReplaySampler(cfg) as s:
        _fill_to_the_top(w, make_traj, [0, 0, 0, 0])  # diff 4: actors blocked
        assert not w.has_room(1)
        with pytest.raises(ReplayTimeout, match="no record has version >= 1"):
            s.sample(1, min_version=1, timeout_s=0.1)
        assert s.rate_limiter.counts() == {"inserts": 4, "samples": 0}  # a stale draw is free
        released = s.release_if_all_stale(1)
        assert released == StaleRelease(size=4, inserts=4, samples_before=0, samples_after=4)
        assert s.rate_limiter.counts() == {"inserts": 4, "samples": 4}  # diff 0: the bottom
        assert w.has_room(4)
        with pytest.raises(ReplayTimeout, match="rate limiter holds the learner"):
            s.sample(1, min_version=0, timeout_s=0.1)  # the old records count as consumed
        assert s.release_if_all_stale(1) is None  # nothing granted now: nothing to release
        for i in range(10, 14):  # the whole band is free again for fresh records
            w.write(make_traj(i, version=1), timeout_s=0.1)
        assert not w.has_room(1)
        assert s.sample(1, min_version=1, timeout_s=0.1)[0].meta.version == 1


def test_no_release_with_a_fresh_record_or_room_for_actors(replay_cfg, make_traj):
    cfg = replay_cfg(capacity=64, samples_per_insert=1.0, min_size_to_sample=2, error_buffer=2.0)
    with ReplayWriter(cfg) as w, ReplaySampler(cfg) as s:
        _fill_to_the_top(w, make_traj, [0, 1, 0, 0])
        assert s.release_if_all_stale(1) is None  # one record can still be drawn
        assert s.rate_limiter.counts() == {"inserts": 4, "samples": 0}
        assert s.release_if_all_stale(2) is not None  # ... but not at min_version 2
    cfg = replay_cfg(capacity=64, samples_per_insert=1.0, min_size_to_sample=2, error_buffer=2.0)
    with ReplayWriter(cfg) as w, ReplaySampler(cfg) as s:
        _fill_to_the_top(w, make_traj, [0, 0, 0])  # diff 3: actors may still insert
        assert w.has_room(1)
        assert s.release_if_all_stale(1) is None
        assert s.rate_limiter.counts() == {"inserts": 3, "samples": 0}
    cfg = replay_cfg(capacity=64, samples_per_insert=1.0, min_size_to_sample=8, error_buffer=2.0)
    with ReplayWriter(cfg) as w, ReplaySampler(cfg) as s:
        _fill_to_the_top(w, make_traj, [0, 0, 0])
        s.rate_limiter.load_state_dict({"inserts": 20, "samples": 0})
        assert s.release_if_all_stale(1) is None  # below min_size no sample is granted


def test_release_in_recent_mode_looks_only_at_the_window(replay_cfg, make_traj):
    # a fresh record outside the newest-2 window can never be drawn: the deadlock is real
    kw = dict(capacity=64, samples_per_insert=1.0, min_size_to_sample=2, error_buffer=2.0)
    cfg = replay_cfg(sampling="recent", recent_window=2, **kw)
    with ReplayWriter(cfg) as w, ReplaySampler(cfg) as s:
        _fill_to_the_top(w, make_traj, [1, 0, 0, 0])
        released = s.release_if_all_stale(1)
        assert released is not None and released.samples_after == 4
    cfg = replay_cfg(sampling="uniform", **kw)
    with ReplayWriter(cfg) as w, ReplaySampler(cfg) as s:
        _fill_to_the_top(w, make_traj, [1, 0, 0, 0])
        assert s.release_if_all_stale(1) is None  # uniform draws reach the fresh one


def test_release_counts_records_on_every_shard(replay_cfg, redis_url, make_traj):
    kw = dict(capacity=64, shards=[redis_url], samples_per_insert=1.0, min_size_to_sample=2,
              error_buffer=2.0)
    cfg = replay_cfg(**kw)
    with ReplayWriter(cfg) as w, ReplaySampler(cfg) as s:
        for i, (actor, v) in enumerate([(0, 0), (1, 0), (1, 1), (0, 0)]):
            w.write(make_traj(i, actor=actor, version=v), timeout_s=0.1)
        assert s.release_if_all_stale(1) is None  # the fresh one lives on shard 1
        released = s.release_if_all_stale(2)
        assert released == StaleRelease(size=4, inserts=4, samples_before=0, samples_after=4)


def test_release_when_stale_records_block_an_actors_batch_not_one_insert(replay_cfg, make_traj):
    # spi 4, min size 2, error buffer 4: diff = 4 * inserts - samples must stay in [4, 12]; an
    # actor with batches of 2 waits for room for 2 (has_room), so room for one insert does not
    # unblock it (samples_per_insert 4 froze a toy run this way: the release asked about 1)
    cfg = replay_cfg(capacity=64, samples_per_insert=4.0, min_size_to_sample=2, error_buffer=4.0)
    with ReplayWriter(cfg) as w, ReplaySampler(cfg) as s:
        _fill_to_the_top(w, make_traj, [0, 0])  # diff 8
        s.sample(1, min_version=0, timeout_s=0.1)  # diff 7
        assert w.has_room(1) and not w.has_room(2)  # 12 - 1 = 11 <= 12; 16 - 1 = 15 > 12
        with pytest.raises(ReplayTimeout, match="no record has version >= 1"):
            s.sample(1, min_version=1, timeout_s=0.1)
        assert s.release_if_all_stale(1, batch=1) is None  # one insert would still fit
        released = s.release_if_all_stale(1, batch=2)
        assert released == StaleRelease(size=2, inserts=2, samples_before=1, samples_after=4)
        assert w.has_room(2)  # the bottom: a batch of 2 fits (16 - 4 = 12)
        with pytest.raises(ValueError, match="batch = 0"):
            s.release_if_all_stale(1, batch=0)
