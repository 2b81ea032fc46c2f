"""`ReplayWriter.write_many`: an actor's batch in one transaction, the limiter's rules kept."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from critic_unlearn.replay import RedisServer, ReplaySampler, ReplayTimeout, ReplayWriter


def command_calls(url: str) -> dict[str, int]:
    stats = redis.Redis.from_url(url).info("commandstats")
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}


def test_a_batch_goes_in_with_one_exec_and_reads_back_whole(replay_cfg, make_traj):
    with RedisServer() as server:  # a private server: nothing else moves its command counts
        cfg = replay_cfg(url=server.url, capacity=16)
        trajs = [make_traj(i) for i in range(4)]
        with ReplayWriter(cfg) as w, ReplaySampler(cfg, seed=0) as s:
            w.write_many([make_traj(99)])  # loads the INSERT script (a first EVALSHA is refused)
            before = command_calls(server.url)
            refs = w.write_many(trajs)
            after = command_calls(server.url)
            assert after["exec"] - before["exec"] == 1  # one transaction, one round trip
            assert after["evalsha"] - before["evalsha"] == 4  # each record its own INSERT
            assert [r.id for r in refs] == [2, 3, 4, 5] and [r.slot for r in refs] == [1, 2, 3, 4]
            assert w.counters.inserts == 5
            got = {rec.trajectory.prompt_id: rec for rec in s.sample(64, min_version=0)}
            assert set(got) == {f"traj-{i}" for i in (0, 1, 2, 3, 99)}
            for t in trajs:  # every record intact, and its metadata is its own
                rec = got[t.prompt_id]
                assert rec.trajectory.latents.equal(t.latents) and rec.meta.reward == t.reward


def test_records_the_limiter_holds_back_wait_and_a_timeout_says_which_went_in(
    replay_cfg, make_traj
):
    # spi 1, min size 2, error buffer 2: inserts - samples may reach 4 before the learner draws
    cfg = replay_cfg(capacity=16, samples_per_insert=1.0, min_size_to_sample=2, error_buffer=2.0)
    with ReplayWriter(cfg) as w, ReplaySampler(cfg, seed=0) as s:
        with pytest.raises(ReplayTimeout, match="rate limiter holds actor 0") as e:
            w.write_many([make_traj(i) for i in range(6)], timeout_s=0.2)
        assert e.value.written == (0, 1, 2, 3) and s.size() == 4

        def learner() -> None:
            time.sleep(0.3)
            s.sample(3, min_version=0, timeout_s=2.0)

        t = threading.Thread(target=learner)
        t.start()
        refs = w.write_many([make_traj(10 + i) for i in range(3)], timeout_s=5.0)
        t.join()
        assert [r.id for r in refs] == [5, 6, 7]  # in order, after the learner made room
        assert s.rate_limiter.counts() == {"inserts": 7, "samples": 3}


def test_a_batch_for_another_shard_asks_the_primary_limiter(replay_cfg, make_traj):
    with RedisServer() as other:
        cfg = replay_cfg(capacity=32, shards=[other.url])
        with ReplayWriter(cfg) as w, ReplaySampler(cfg, seed=0) as s:
            refs = w.write_many([make_traj(i, actor=1) for i in range(3)])  # actor 1: shard 1
            assert [r.shard for r in refs] == [1, 1, 1] and [r.id for r in refs] == [1, 2, 3]
            assert s.rate_limiter.counts()["inserts"] == 3  # counted on the primary shard
            assert [sh.size() for sh in s.shards] == [0, 3]
