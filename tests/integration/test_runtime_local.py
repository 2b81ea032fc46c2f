"""The Ray runtime on a local cluster started in this process (2 CPUs), with 2 actors and the
learner on tiny models and a private Redis server: a clean run, an actor SIGKILLed mid-run, and
Redis restarted mid-run. Each run must end by itself at learner.max_steps."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import torch

from critic_unlearn.config import RunConfig
from critic_unlearn.diffusion.lora import adapter_manifest, get_adapter_state
from critic_unlearn.replay import RedisServer, ReplaySampler, WeightStore, encode_packet
from critic_unlearn.runtime import train_local, train_ray
from critic_unlearn.runtime.actor_worker import RayActorWorker
from critic_unlearn.runtime.cluster import local_cluster_kwargs
from critic_unlearn.runtime.weights import RayPublisher
from critic_unlearn.training.loop import CHECKPOINT, STATUS, read_run_state
from critic_unlearn.training.metrics import read_metrics
from critic_unlearn.training.setup import build_actor
from critic_unlearn.training.snapshots import list_snapshots
from critic_unlearn.types import WeightsPacket
from critic_unlearn.workers.actor import ActorWorker
from tests._tiny_run import tiny_run_config

MAX_STALENESS = 2


def runtime_overrides(redis_url: str, *extra: str) -> list[str]:
    """configs/tiny_run.yaml's run on Ray: 2 actors x 4 trajectories of 4 steps, learner batches
    of 4, short timeouts and back-offs, to 6 learner steps."""
    return [
        "learner.max_steps=6",
        f"replay.url={redis_url}",
        f"replay.max_staleness={MAX_STALENESS}",
        "replay.timeout_s=20",
        "replay.retry_deadline_s=30",
        "actors.num=2",
        "actors.cpus_per_actor=0.5",
        "actors.restart_backoff_s=0.5",
        "actors.weight_poll_s=2",
        "runtime.kind=ray",
        "runtime.learner_cpus=0.5",
        "runtime.progress_every_s=2",
        "runtime.run_name=rt",
        *extra,
    ]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One in-process cluster for the module; auth disabled on both sides (this process sets
    the mode before the cluster starts, so the GCS and this driver agree)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.delenv("RAY_ADDRESS", raising=False)
        ray.init(**local_cluster_kwargs(2), log_to_driver=False)  # fresh, never a recorded one
        try:
            yield
        finally:
            ray.shutdown()


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def make_cfg(tiny_model_dir, clip_dir, tmp_path, redis) -> Callable[..., RunConfig]:
    def make(*extra: str) -> RunConfig:
        return tiny_run_config(
            tiny_model_dir, clip_dir, tmp_path, *runtime_overrides(redis.url, *extra)
        )

    return make


def when(predicate: Callable[[], bool], then: Callable[[], None], timeout_s: float = 240) -> list:
    """Run `then` in a thread once `predicate` holds; returns a list that gets True if it ran."""
    done: list = []

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if predicate():
                    then()
                    done.append(True)
                    return
            except (OSError, ValueError, KeyError):  # files mid-write
                pass
            time.sleep(0.1)

    threading.Thread(target=watch, daemon=True).start()
    return done


def task_event_names(probe: Any, timeout_s: float = 30) -> list[str]:
    """Names of the tasks in the GCS's task-event store, once `probe`'s event has arrived
    (workers report theirs every second or so)."""
    from ray._private.state import state

    ray.get(probe)
    deadline = time.monotonic() + timeout_s
    while True:
        names = [e.task_info.name for e in state._get_all_task_events()]
        if "probe" in names or time.monotonic() > deadline:
            return names
        time.sleep(0.5)


def steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(read_metrics(path)) if path.exists() else 0


@pytest.mark.slow
def test_the_local_cluster_listens_on_loopback_only(local_ray) -> None:
    # Ray turns _node_ip_address="127.0.0.1" into the machine's routable address unless told
    # the cluster is single-node; the runtime, the tests and the benches start it this way
    @ray.remote
    def node_ip() -> str:
        return ray.util.get_node_ip_address()

    assert [n["NodeManagerAddress"] for n in ray.nodes()] == ["127.0.0.1"]
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert ray.get(node_ip.remote()) == "127.0.0.1"  # a worker process, too


def test_two_actors_fill_replay_get_new_versions_and_stop_at_budget(local_ray, make_cfg, redis):
    cfg = make_cfg()
    r = train_ray(cfg)
    assert r.learner_steps == 7 and r.version == 6  # one critic warm-up step on top of 6 updates
    # samples_per_insert 1: 24 samples need 24 inserts, less the limiter's slack
    # (error_buffer - min_size * spi = 8 - 4): samples may run 4 ahead of inserts
    rp = cfg.replay
    slack = rp.error_buffer - rp.min_size_to_sample * rp.samples_per_insert
    assert r.trajectories >= 6 * 4 - slack
    rows = read_metrics(r.run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == list(range(1, 8))
    # the buffer filled, and only fresh enough records were ever trained on
    assert max(row["replay/size"] for row in rows) >= cfg.replay.min_size_to_sample
    assert max(row["learner/staleness_max"] for row in rows) <= MAX_STALENESS
    # both actors sampled, and new versions reached both (a run one actor did alone fails here)
    for i in (0, 1):
        assert max(row[f"actor/{i}/trajectories"] for row in rows) > 0, f"actor {i} never sampled"
        assert max(row[f"actor/{i}/version"] for row in rows) >= 1, i
    assert rows[-1]["runtime/publish_to_applied_ms"] is not None
    assert (r.run_dir / CHECKPOINT).exists() and (
        r.run_dir / "adapter/adapter.safetensors"
    ).exists()
    assert list((r.run_dir / "tb").iterdir())
    # a snapshot per checkpoint, the last one at the final step (curves are judged from them)
    snaps = list_snapshots(r.run_dir)
    assert snaps and snaps[-1].step == 7 and snaps[-1].trajectories == r.trajectories
    # every logged step saw forget trajectories (each batch of 4 is half forget): never NaN
    assert all(math.isfinite(row["actor/forget_reward_mean"]) for row in rows), rows
    # the durable copy in Redis is the final version, with its manifest
    store = WeightStore(cfg.replay, "rt")
    assert store.latest_version() == 6 and store.get().manifest["base_model"] == str(
        cfg.model.pretrained
    )
    store.close()
    status = json.loads((r.run_dir / STATUS).read_text())
    assert all(a["restarts"] == 0 for a in status["actors"].values())
    # runtime.task_events is off: the learner's and actors' many calls left no task events in
    # Ray's GCS (they grew it without bound in a soak), while a call here with events on did
    assert not cfg.runtime.task_events
    names = task_event_names(ray.remote(lambda: "probe").options(name="probe").remote())
    assert "probe" in names
    ours = [n for n in names if n.split(".")[0] in ("RayActorWorker", "RayLearnerWorker")]
    assert not ours, ours


@pytest.mark.slow
def test_a_checkpoint_resumes_in_the_other_runtime(local_ray, make_cfg):
    """One loop, one checkpoint format: local -> Ray -> local in one run folder, each leg
    continuing the step count, the version, the trajectory count and actor 0's seed stream."""
    local = train_local(make_cfg("runtime.kind=local", "learner.max_steps=2"))
    assert (local.learner_steps, local.version) == (3, 2)  # one critic warm-up step on top
    after_local = read_run_state(local.run_dir / CHECKPOINT)
    assert set(after_local.actors) == {0} and after_local.trajectories == local.trajectories

    ray_leg = train_ray(make_cfg("learner.max_steps=4", "learner.checkpoint_every=1"))
    assert ray_leg.run_dir == local.run_dir
    assert (ray_leg.learner_steps, ray_leg.version) == (5, 4)
    assert ray_leg.trajectories > local.trajectories
    after_ray = read_run_state(local.run_dir / CHECKPOINT)
    assert set(after_ray.actors) == {0, 1}
    # actor 0 went on from the seed the local leg stopped at, not from its initial seed (0); it
    # may not have finished a batch in this short leg (actor 1 can sample all of it while actor
    # 0 is still building its models), so its stream may only have been carried over
    assert after_ray.actors[0]["next_seed"] >= after_local.actors[0]["next_seed"] > 0

    # 3 more updates take 12 samples; the limiter lets samples run at most 4 ahead of inserts
    last = train_local(make_cfg("runtime.kind=local", "learner.max_steps=7"))
    assert (last.learner_steps, last.version) == (8, 7)
    assert last.trajectories > ray_leg.trajectories
    after_last = read_run_state(local.run_dir / CHECKPOINT)
    assert after_last.actors[0]["next_seed"] > after_ray.actors[0]["next_seed"]
    rows = read_metrics(local.run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == list(range(1, 9))  # nothing logged twice
    assert [s.step for s in list_snapshots(local.run_dir)][-1] == 8


@pytest.mark.slow
def test_two_learner_workers_run_and_resume_with_one_and_back(local_ray, make_cfg):
    """learner.num_workers = 2 (two ranks of a gloo group, two halves of each batch) runs to
    its budget; its checkpoint resumes with one learner, and that one's with two again."""
    two = train_ray(make_cfg("learner.num_workers=2", "learner.max_steps=2",
                             "learner.checkpoint_every=1"))
    assert (two.updates, two.version, two.learner_steps) == (2, 2, 3)  # + one warm-up step
    status = json.loads((two.run_dir / STATUS).read_text())["learner"]
    assert len(set(status["pids"])) == 2 and status["pid"] == status["pids"][0]
    saved = read_run_state(two.run_dir / CHECKPOINT).learner["ranks"]
    assert len(saved["learner_rng"]) == len(saved["sampler_rng"]) == 2
    assert not torch.equal(saved["sampler_rng"][0], saved["sampler_rng"][1])  # own draws

    one_cfg = make_cfg("learner.max_steps=3", "learner.checkpoint_every=1")
    one = train_ray(one_cfg)
    assert (one.updates, one.version, one.learner_steps) == (3, 3, 4)
    assert len(read_run_state(two.run_dir / CHECKPOINT).learner["ranks"]["learner_rng"]) == 1

    # a learner that was lost after publishing version 10: the group labels from 11 on
    store = WeightStore(one_cfg.replay, "rt")
    lost = store.get()
    store.put(encode_packet(WeightsPacket(10, lost.state_dict, lost.manifest)),
              WeightsPacket(10, lost.state_dict, lost.manifest))
    store.close()
    back = train_ray(make_cfg("learner.num_workers=2", "learner.max_steps=4"))
    assert (back.updates, back.learner_steps, back.version) == (4, 5, 12)
    rows = read_metrics(two.run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == list(range(1, 6))  # each step logged once
    assert all(0.0 <= row["learner/data_wait_share"] <= 1.0 for row in rows)


@pytest.mark.slow
def test_sigkilled_actor_is_restarted_and_the_run_completes(local_ray, make_cfg, redis, tmp_path):
    # long enough for a replacement to start (a fresh worker imports torch and builds models)
    cfg = make_cfg("learner.max_steps=100")
    run_dir = tmp_path / "rt"
    killed: list[int] = []

    def kill_actor_1() -> None:
        pid = json.loads((run_dir / STATUS).read_text())["actors"]["1"]["pid"]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    def actor_1_is_sampling() -> bool:
        pid = json.loads((run_dir / STATUS).read_text())["actors"]["1"]["pid"]
        return pid is not None and steps_logged(run_dir) >= 1

    fired = when(actor_1_is_sampling, kill_actor_1)
    r = train_ray(cfg)
    assert fired and killed
    assert r.version == 100 and r.learner_steps == 101  # + one warm-up step
    status = json.loads((run_dir / STATUS).read_text())
    a1 = status["actors"]["1"]
    assert a1["restarts"] == 1 and a1["failures"] == 1 and "ActorDiedError" in a1["last_error"]
    assert a1["pid"] not in (None, killed[0])  # a new process ...
    assert a1["trajectories_this_incarnation"] > 0 and a1["version"] >= 1  # ... sampling again
    assert status["actors"]["0"]["restarts"] == 0
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert rows[-1]["actor/restarts"] == 1
    # replay consistent: every insert is present or evicted, nothing corrupt, no seed twice
    unlimited = cfg.replay.model_copy(update={"error_buffer": 1e9, "min_size_to_sample": 1})
    with ReplaySampler(unlimited, namespace="rt") as s:
        st = s.stats()
        present = int(st["replay/server_present"])
        assert st["replay/server_inserted"] == present + st["replay/server_evictions"]
        assert st["replay/server_corrupt"] == 0
        ids_by_seed: dict[tuple[int, int], set[int]] = {}
        for x in s.sample(present * 10, min_version=0, timeout_s=5):  # sees all w.h.p.
            ids_by_seed.setdefault((x.trajectory.actor_id, x.trajectory.seed), set()).add(x.meta.id)
        assert all(len(ids) == 1 for ids in ids_by_seed.values())  # no seed stored twice


@pytest.mark.slow
def test_sigkilled_learner_is_restarted_from_its_checkpoint_and_the_run_completes(
    local_ray, make_cfg, tmp_path
):
    cfg = make_cfg("learner.max_steps=14", "learner.checkpoint_every=2")
    run_dir = tmp_path / "rt"
    killed: list[int] = []

    def status() -> dict:
        return json.loads((run_dir / STATUS).read_text())

    def kill_learner() -> None:
        pid = status()["learner"]["pid"]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    # past a checkpoint (step 4) and one step beyond it, so a step is lost and done again
    fired = when(lambda: steps_logged(run_dir) >= 5 and status()["learner"]["pid"], kill_learner)
    r = train_ray(cfg)
    assert fired and killed
    assert r.updates == 14 and r.learner_steps == 15  # the whole budget, + one warm-up step
    # the versions the lost learner published are not reused: the labels skip past them
    assert r.version > r.updates
    learner = status()["learner"]
    assert learner["restarts"] == 1 and learner["pid"] not in (None, killed[0])
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == list(range(1, 16))  # each step logged once
    # the actors went back to the restored version and on with the new learner's versions
    assert all(a["restarts"] == 0 for a in status()["actors"].values())
    assert max(a["version"] for a in status()["actors"].values()) <= r.version
    assert rows[-1]["actor/0/version"] >= 1 and rows[-1]["actor/1/version"] >= 1
    assert list_snapshots(run_dir)[-1].step == 15


@pytest.mark.slow
def test_redis_restart_mid_run_reconnects_and_completes(local_ray, make_cfg, redis, tmp_path):
    cfg = make_cfg("learner.max_steps=8")
    run_dir = tmp_path / "rt"
    restarted: list[bool] = []

    def restart_redis() -> None:
        redis.kill()  # crash: no save, no goodbye; the buffer and weights copy are gone
        time.sleep(0.5)
        redis.start()  # same port
        restarted.append(True)

    fired = when(lambda: steps_logged(run_dir) >= 3, restart_redis)
    r = train_ray(cfg)
    assert fired and restarted
    assert r.learner_steps == 9 and r.version == 8
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [row["step"] for row in rows] == list(range(1, 10))
    with ReplaySampler(cfg.replay, namespace="rt") as s:  # the new server got new records
        st = s.stats()
        assert 0 < st["replay/server_inserted"] < r.trajectories
    store = WeightStore(cfg.replay, "rt")  # and the durable weights were written again
    assert store.latest_version() == 8
    store.close()


def test_actor_worker_polls_an_empty_weight_store_without_a_failure(make_cfg):
    """A fresh run's first polls find nothing published: that is not a failed fetch (the
    version comparison once ran before the None check and logged a TypeError per poll)."""
    worker = ActorWorker(make_cfg(), 0, "empty-store")
    with worker.model_lock:
        assert worker._pull_from_store() is False
    assert worker.fetch_failures == 0 and worker.actor.version == 0
    worker.close()


@pytest.mark.slow
def test_actor_worker_takes_durable_copy_refuses_foreign_weights_survives_bad_fetch(
    local_ray, make_cfg
):
    """The weight paths of one RayActorWorker: a new actor starts from the Redis copy; a manifest
    for another model is refused; a blob that fails to fetch or decode falls back to the Redis
    copy, or keeps the current weights; a batch carries the version it was sampled with."""
    cfg = make_cfg()
    ref_actor = build_actor(cfg, 0)  # here only for the adapter's names, shapes and model id
    shapes = get_adapter_state(ref_actor.c.unet)

    def packet(version: int, base: str = ref_actor.c.model_id) -> WeightsPacket:
        state = {k: torch.full_like(v, version * 1e-3) for k, v in shapes.items()}
        return WeightsPacket(
            version, state, adapter_manifest(base, ref_actor.lora_hash, state, version)
        )

    publisher = RayPublisher(WeightStore(cfg.replay, "wt"))
    publisher.publish(packet(3))
    worker = ray.remote(RayActorWorker).options(num_cpus=0.5, max_concurrency=2).remote(
        cfg, 0, "wt"
    )
    assert ray.get(worker.start.remote())["version"] == 3  # no push: the durable copy

    foreign = ray.put(encode_packet(packet(4, base="someone/else-model")))
    ack = ray.get(worker.set_weights.remote([foreign]))
    assert not ack["applied"] and ack["version"] == 3  # refused, v3 kept

    publisher.publish(packet(5))  # the Redis copy is now v5
    ack = ray.get(worker.set_weights.remote([ray.put(b"not a safetensors blob")]))
    assert ack["applied"] and ack["version"] == 5  # bad blob: took the Redis copy instead

    torn = ray.put(encode_packet(packet(6))[:-16])
    ack = ray.get(worker.set_weights.remote([torn]))
    assert not ack["applied"] and ack["version"] == 5  # nothing newer anywhere: v5 kept

    publisher.publish(packet(7))
    ack = ray.get(worker.set_weights.remote([publisher.latest.ref]))
    assert ack["applied"] and ack["version"] == 7
    report = ray.get(worker.run_batch.remote())
    assert report.written == cfg.sampler.batch_size and report.version == 7
    ray.kill(worker)
    publisher.store.close()
