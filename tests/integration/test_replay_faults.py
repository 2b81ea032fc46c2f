"""Crashes, bad configuration, a full server: one clear error each, never half a record."""

from __future__ import annotations

import threading
import time

import pytest

from critic_unlearn.codec import decode_trajectory
from critic_unlearn.config import ReplayConfig
from critic_unlearn.replay import (
    ReplayAuthError,
    ReplayConnectionError,
    ReplayFullError,
    ReplaySampler,
    ReplayWriter,
)
from critic_unlearn.replay.client import Connection
from critic_unlearn.replay.server import free_port


def _cfg(url: str, **kw: object) -> ReplayConfig:
    base: dict = dict(url=url, namespace="faults", capacity=1000, min_size_to_sample=1,
                      samples_per_insert=1.0, error_buffer=1e9, timeout_s=2.0,
                      retry_deadline_s=1.0, socket_timeout_s=2.0)
    return ReplayConfig(**{**base, **kw})


def _check_consistent(s: ReplaySampler) -> int:
    """Every indexed record has full metadata and a payload that decodes and agrees; ids unique."""
    shard = s.shards[0]
    r, k = shard.conn.redis, shard.keys
    slots = [int(x) for x in r.zrange(k.ver, 0, -1)]
    ids = set()
    for slot in slots:
        meta = {a.decode(): b.decode() for a, b in r.hgetall(k.meta(slot)).items()}
        assert set(meta) == {"id", "uid", "version", "reward", "role", "actor", "times_sampled",
                             "priority", "bytes"}, meta
        payload = r.get(k.slot(slot))
        assert payload is not None and len(payload) == int(meta["bytes"])
        traj = decode_trajectory(payload)
        assert (traj.version, traj.actor_id) == (int(meta["version"]), int(meta["actor"]))
        ids.add(int(meta["id"]))
    assert len(ids) == len(slots) == r.hlen(k.uid) == r.zcard(k.prio)
    assert max(ids, default=0) <= int(r.get(k.head) or 0)
    return len(slots)


@pytest.mark.slow
def test_sigkill_mid_stream_leaves_only_whole_records(private_server, make_traj):
    server = private_server(appendonly=True)
    cfg = _cfg(server.url, retry_deadline_s=20.0)
    done, errors = [], []
    stop = threading.Event()

    def writer() -> None:
        try:
            with ReplayWriter(cfg) as w:
                i = 0
                while not stop.is_set():
                    w.write(make_traj(i, version=i, side=32))
                    done.append(i)
                    i += 1
        except Exception as e:  # surfaced by the assertion below
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    while len(done) < 50:
        time.sleep(0.005)
    server.kill()
    killed_at = len(done)
    time.sleep(0.5)
    server.start()  # same port, same data dir: the AOF is replayed
    while len(done) < killed_at + 50 and t.is_alive():
        time.sleep(0.01)
    stop.set()
    t.join(timeout=30)
    assert not errors, errors  # the writer reconnected on its own
    with ReplaySampler(cfg) as s:
        present = _check_consistent(s)
        assert present >= killed_at + 40  # fsync=always: acknowledged writes survived
        assert len(s.sample(20, min_version=0)) == 20


def test_full_server_refuses_insert_whole(private_server, make_traj):
    server = private_server(extra_args=("--maxmemory", "4mb"))
    cfg = _cfg(server.url)
    with ReplayWriter(cfg) as w, ReplaySampler(cfg) as s:
        with pytest.raises(ReplayFullError, match=r"out of memory.*nothing was stored"):
            for i in range(200):
                w.write(make_traj(i, side=64))  # ~100 KB each
        head = int(s.shards[0].conn.redis.get(s.shards[0].keys.head))
        assert _check_consistent(s) == head  # the refused insert left no trace
        keys = s.shards[0].keys
        assert not list(s.shards[0].conn.redis.scan_iter(match=keys.stage("*")))
        assert len(s.sample(3, min_version=0)) == 3  # reading still works when full


def test_bad_url_is_one_clear_error():
    with pytest.raises(ValueError, match="replay.url = 'http://u:\\*\\*\\*@localhost:1/0' is not"):
        ReplayWriter(_cfg("http://u:secret@localhost:1/0"))


def test_wrong_password_is_one_clear_error(private_server):
    server = private_server(extra_args=("--requirepass", "right-pw"))
    url = f"redis://:wrong-pw@127.0.0.1:{server.port}/0"
    t0 = time.monotonic()
    with pytest.raises(ReplayAuthError, match="refused the credentials") as err:
        ReplaySampler(_cfg(url, retry_deadline_s=10.0))
    assert time.monotonic() - t0 < 2.0  # no retrying what cannot succeed
    assert "wrong-pw" not in str(err.value) and ":***@127.0.0.1" in str(err.value)
    with pytest.raises(ReplayAuthError):
        ReplaySampler(_cfg(server.url))  # no password at all
    with ReplaySampler(_cfg(f"redis://:right-pw@127.0.0.1:{server.port}/0")) as s:
        assert s.size() == 0


def test_server_down_at_start_is_one_clear_error(caplog):
    """First contact is not retried: nothing listens on the port, so the error comes at once
    (a long retry deadline notwithstanding), without retry warnings before it."""
    port = free_port()
    url = f"redis://user:pw@127.0.0.1:{port}/0"
    t0 = time.monotonic()
    with pytest.raises(ReplayConnectionError) as err:
        ReplayWriter(_cfg(url, retry_deadline_s=30.0))
    assert time.monotonic() - t0 < 2.0
    msg = str(err.value)
    assert f"cannot reach Redis at replay.url = 'redis://user:***@127.0.0.1:{port}/0'" in msg
    assert "pw@" not in msg and "fix replay.url" in msg and "\n" not in msg
    assert not [r for r in caplog.records if "retry" in r.getMessage()]


def test_connection_lost_after_first_contact_is_retried(private_server):
    """A server that answered once and then went away is waited for (back-off, up to
    replay.retry_deadline_s); only a server that stays away is an error."""
    server = private_server()
    conn = Connection(server.url, socket_timeout_s=2.0, retry_deadline_s=20.0)
    server.kill()
    restart = threading.Timer(1.0, server.start)
    restart.start()
    t0 = time.monotonic()
    assert conn.call(conn.redis.ping) is True  # reconnected once the server was back
    restart.join()
    assert 0.8 < time.monotonic() - t0 < 15.0
    conn.retry_deadline_s = 1.0
    server.kill()
    with pytest.raises(ReplayConnectionError, match=r"after \d+ attempts.*retry_deadline_s"):
        conn.call(conn.redis.ping)
    conn.close()


def test_password_from_an_environment_variable_stays_out_of_the_config(private_server,
                                                                        monkeypatch):
    from critic_unlearn.config import dump_config, load_config

    server = private_server(extra_args=("--requirepass", "env-pw"))
    cfg = _cfg(server.url, password_env="CU_TEST_REDIS_PASSWORD")
    monkeypatch.delenv("CU_TEST_REDIS_PASSWORD", raising=False)
    with pytest.raises(ValueError, match="replay.password_env = 'CU_TEST_REDIS_PASSWORD' names"):
        ReplayWriter(cfg)
    monkeypatch.setenv("CU_TEST_REDIS_PASSWORD", "wrong")
    with pytest.raises(ReplayAuthError):
        ReplayWriter(cfg)
    monkeypatch.setenv("CU_TEST_REDIS_PASSWORD", "env-pw")
    with ReplaySampler(cfg) as s:
        assert s.size() == 0
    run = load_config(
        None, [f"replay.url={server.url}", "replay.password_env=CU_TEST_REDIS_PASSWORD"]
    )
    assert "env-pw" not in dump_config(run)
