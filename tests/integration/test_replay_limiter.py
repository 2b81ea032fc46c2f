"""Samples-per-insert rate limiter: Reverb semantics, blocking with timeouts, checkpointing."""

from __future__ import annotations

import threading
import time

import pytest

from critic_unlearn.config import ReplayConfig
from critic_unlearn.replay import ReplaySampler, ReplayTimeout, ReplayWriter


def test_spi_2_blocks_both_sides_and_resumes(replay_cfg, make_traj):
    # spi 2, min size 4, error buffer 4: diff = 2 * inserts - samples must stay in [4, 12]
    cfg = replay_cfg(capacity=64, samples_per_insert=2.0, min_size_to_sample=4, error_buffer=4.0)
    with ReplayWriter(cfg) as w, ReplaySampler(cfg) as s:
        with pytest.raises(ReplayTimeout, match="rate limiter holds the learner"):
            s.sample(1, min_version=0, timeout_s=0.1)  # below min_size_to_sample
        for i in range(6):
            w.write(make_traj(i), timeout_s=0.1)
        with pytest.raises(ReplayTimeout, match="rate limiter holds actor 0"):
            w.write(make_traj(6), timeout_s=0.2)  # 7 * 2 - 0 > 12: actors may not run ahead
        assert len(s.sample(8, min_version=0, timeout_s=0.1)) == 8  # 12 - 8 >= 4
        t0 = time.monotonic()
        with pytest.raises(ReplayTimeout, match="writers are not keeping up or have stopped"):
            s.sample(1, min_version=0, timeout_s=0.3)  # writers stopped: the timeout fires
        assert 0.25 < time.monotonic() - t0 < 2.0

        writes_began: list[float] = []

        def late_writer() -> None:
            time.sleep(0.3)  # give the sampler time to block first
            writes_began.append(time.monotonic())
            for i in range(2):
                w.write(make_traj(10 + i), timeout_s=30.0)

        t = threading.Thread(target=late_writer)
        t.start()
        got = s.sample(4, min_version=0, timeout_s=30.0)  # resumes once the writer catches up
        returned = time.monotonic()
        t.join()
        assert len(got) == 4 and returned >= writes_began[0]  # not before the writes began
        assert s.stats()["replay/blocked_s"] > 0  # the sampler counted its wait as blocked
        assert s.rate_limiter.counts() == {"inserts": 8, "samples": 12}


def test_state_dict_round_trip_and_explicit_reset(replay_cfg, make_traj):
    cfg = replay_cfg(capacity=64, samples_per_insert=1.0, min_size_to_sample=2, error_buffer=2.0)
    with ReplayWriter(cfg) as w, ReplaySampler(cfg) as s:
        for i in range(4):
            w.write(make_traj(i))
        s.sample(3, min_version=0, timeout_s=0.1)
        saved = s.rate_limiter.state_dict()
        assert saved["inserts"] == 4 and saved["samples"] == 3
        assert saved["samples_per_insert"] == 1.0
        s.rate_limiter.reset()  # a reset limiter wants fresh inserts before it grants samples
        assert s.rate_limiter.counts() == {"inserts": 0, "samples": 0}
        with pytest.raises(ReplayTimeout):
            s.sample(1, min_version=0, timeout_s=0.1)
        s.rate_limiter.load_state_dict(saved)
        assert s.rate_limiter.counts() == {"inserts": 4, "samples": 3}
        with pytest.raises(ValueError, match="lacks integer 'inserts' and 'samples'"):
            s.rate_limiter.load_state_dict({"inserts": 1})


def test_error_buffer_smaller_than_spi_is_refused():
    with pytest.raises(ValueError, match=r"replay.error_buffer = 1.0 must be >= max\(1"):
        ReplayConfig(samples_per_insert=4.0, error_buffer=1.0)
