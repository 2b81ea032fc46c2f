"""4 writer processes and 1 sampler process on one buffer for 20 s (REPLAY_STRESS_S to change)."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest
import torch

from critic_unlearn.codec import decode_trajectory
from critic_unlearn.config import ReplayConfig
from critic_unlearn.replay import ReplaySampler, ReplayTimeout, ReplayWriter

WRITERS = 4
DURATION_S = float(os.environ.get("REPLAY_STRESS_S", "20"))


def _writer(cfg: ReplayConfig, actor: int, make_traj, out: mp.Queue) -> None:
    torch.set_num_threads(1)
    n = 0
    with ReplayWriter(cfg) as w:
        deadline = time.monotonic() + DURATION_S
        while (left := deadline - time.monotonic()) > 0:
            traj = make_traj(actor * 10_000_000 + n, version=n // 100, actor=actor)
            try:  # blocked by the limiter: fine near the end, when the sampler has stopped
                w.write(traj, timeout_s=left + 5.0)
            except ReplayTimeout:
                if time.monotonic() < deadline:
                    raise
                break
            n += 1
        out.put(("writer", actor, n, w.stats()["replay/duplicates"]))


def _sampler(cfg: ReplayConfig, out: mp.Queue) -> None:
    torch.set_num_threads(1)
    seen: dict[tuple[int, int], str] = {}
    drawn = mismatched = 0
    with ReplaySampler(cfg) as s:
        deadline = time.monotonic() + DURATION_S
        while (left := deadline - time.monotonic()) > 0:
            try:  # blocked: fine near the end, when the writers have stopped
                recs = s.sample(16, min_version=0, timeout_s=left + 5.0)
            except ReplayTimeout:
                if time.monotonic() < deadline:
                    raise
                break
            for rec in recs:
                t, m = rec.trajectory, rec.meta
                drawn += 1
                key = (m.shard, m.id)
                # one id always names the same trajectory, and its metadata matches the payload
                if seen.setdefault(key, t.prompt_id) != t.prompt_id or (
                    t.actor_id, t.version, t.reward) != (m.actor, m.version, m.reward):
                    mismatched += 1
        out.put(("sampler", drawn, mismatched, s.stats()["replay/corrupt_skipped"], len(seen)))


@pytest.mark.slow
def test_four_writers_one_sampler(replay_cfg, make_traj):
    cfg = replay_cfg(capacity=256, min_size_to_sample=16, samples_per_insert=1.0,
                     error_buffer=2000.0, timeout_s=30.0, retry_deadline_s=10.0)
    ctx = mp.get_context("fork")  # children inherit imports; each opens its own connections
    out: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(cfg, a, make_traj, out)) for a in range(WRITERS)]
    procs.append(ctx.Process(target=_sampler, args=(cfg, out)))
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=DURATION_S + 60)
        assert p.exitcode == 0, f"{p.name} exited with {p.exitcode} (see its traceback above)"
    results = [out.get(timeout=5) for _ in procs]
    writers = [r for r in results if r[0] == "writer"]
    (_, drawn, mismatched, corrupt, distinct), = [r for r in results if r[0] == "sampler"]
    inserted = sum(r[2] for r in writers)
    assert sum(r[3] for r in writers) == 0
    assert drawn > 100 and distinct > 50 and mismatched == 0 and corrupt == 0

    with ReplaySampler(cfg) as s:
        st = s.stats()
        assert st["replay/server_inserted"] == inserted
        assert st["replay/server_present"] + st["replay/server_evictions"] == inserted
        assert st["replay/server_present"] == min(inserted, cfg.capacity)
        shard = s.shards[0]
        r, k = shard.conn.redis, shard.keys
        prompts, ids = [], []
        for slot in r.zrange(k.ver, 0, -1):
            ids.append(int(r.hget(k.meta(int(slot)), "id")))
            prompts.append(decode_trajectory(r.get(k.slot(int(slot)))).prompt_id)
        assert len(set(ids)) == len(ids) == len(set(prompts)) == cfg.capacity  # no duplicates
        assert sorted(ids) == list(range(inserted - cfg.capacity + 1, inserted + 1))  # newest
