"""How far one learner and one Redis go: synthetic GPU actors against the real replay and broadcast.

    python -m bench.stress.scale            # 1/2/4/8/16 actors x 1/2 Redis shards, ~3-4 min
    python -m bench.stress.scale --quick    # 1/2 actors x 1/2 shards, ~30-40 s

Each simulated actor is a Ray actor with no model: it loops like `ActorWorker.run_batch` (ask the
replay for room, spend a GPU's time on the batch, write it with `ReplayWriter.write_many`), with
records of SD-1.5 size (Trajectory of 4x64x64 fp16 latents, 50 DDIM steps, all kept unless
--keep-steps) at a GPU's rate (default: the H200's 50-step CFG batch of 16 in 4.9 s, 3.27
trajectories/s). Its second thread takes pushed adapters as `ActorWorker.set_weights` does
(`ray.get` of the object-store blob, codec checksum, manifest checksum, copy into the LoRA
tensors). One learner actor draws batches with `ReplaySampler.sample` (the rate limiter and the
staleness bound in force) and, every --publish-every-s, publishes SD-1.5's rank-4 adapter
through the runtime's `RayPublisher` (encode, one `ray.put`, the durable Redis copy); the driver
pushes the reference to every actor, as `ActorPool.broadcast` does, and times publish -> last ack.

Per (shards, actors) it reports sustained inserts/s against offered (exact per actor: whole
batches over whole periods), learner draws/s, sample latency p50/p95 (with the limiter's waits,
and without: "service"), broadcast p50, and the CPU used by the machine, each Redis and the
learner. An actor count "keeps up" while inserts >= 90% of offered. On a machine with fewer
cores than actors + Redis + learner need, every process shares the same cores: a phase whose
machine CPU is >= 90% busy is marked CPU-bound here, and its limit is this machine's, not the
replay's. The projection at the end uses what does carry over to a real deployment, where Redis
and the learner each have a core of their own and actors sit on GPU nodes: Redis CPU per insert
(one core: the ceiling of one shard), learner CPU per drawn record, and the growth of broadcast
latency per actor. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from dataclasses import replace

import psutil
import ray
import torch

from bench.micro.weight_broadcast import Publisher
from bench.stress._cluster import local_ray, redis_servers
from critic_unlearn.codec import checksum, encode_trajectory
from critic_unlearn.config import ReplayConfig, load_config
from critic_unlearn.replay import ReplaySampler, ReplayTimeout, ReplayWriter, decode_packet
from critic_unlearn.types import SamplerSettings, Trajectory

H200_BATCH, H200_BATCH_S = 16, 4.9  # SD-1.5, 50 DDIM steps with CFG, batch 16, on one H200
KEEPS_UP = 0.9  # inserts / offered at or above this: the replay keeps up with the actors
CPU_BOUND_PCT = 90.0  # machine CPU busy at or above this: the numbers are this machine's limit


def sd15_trajectory(num_steps: int, keep: int | None, seed: int) -> Trajectory:
    """A Trajectory of SD-1.5's shapes: the S+1 states x_T..x_0 when all steps are kept, else the
    states of K random transitions (as `sampler.keep_steps` stores them)."""
    g = torch.Generator().manual_seed(seed)
    if keep is None or keep >= num_steps:
        steps = torch.arange(num_steps)
    else:
        steps = torch.randperm(num_steps, generator=g)[:keep].sort().values
    positions = torch.unique(torch.cat([steps, steps + 1]))
    return Trajectory(
        prompt_id="scale-0",
        prompt="a photo of a church",
        role="forget",
        latents=torch.randn(len(positions), 4, 64, 64, generator=g).half(),
        positions=positions,
        steps=steps,
        timesteps=(num_steps - 1 - steps) * (1000 // num_steps) + 1,
        log_probs=torch.randn(len(steps), generator=g),
        reward=0.0,
        version=0,
        actor_id=0,
        seed=seed,
        sampler=SamplerSettings(num_steps=num_steps, eta=1.0, guidance_scale=7.5),
    )


class SyntheticActor:
    """A GPU actor without a model: the replay and weight traffic of one, at a GPU's pace."""

    def __init__(self, actor_id: int, num_steps: int, keep: int | None) -> None:
        torch.set_num_threads(1)
        self.actor_id = actor_id
        self.template = replace(sd15_trajectory(num_steps, keep, actor_id), actor_id=actor_id)
        self.version = 0
        self.lora: dict[str, torch.Tensor] = {}
        self.next_seed = 0

    def pid(self) -> int:
        return os.getpid()

    def record_bytes(self) -> int:
        return len(encode_trajectory(self.template))

    def run(self, replay: ReplayConfig, namespace: str, rate: float, batch: int, offset_s: float,
            start_at: float, end_at: float, drain_until: float) -> dict:
        """Room, a batch's GPU time, write the batch; until end_at. Per batch: when it was
        written and how many, so the caller can count whole periods. A write still held by the
        limiter at drain_until (the learner has stopped drawing) ends the loop."""
        writer = ReplayWriter(replay, namespace=namespace)
        done: list[tuple[float, int]] = []
        write_ms: list[float] = []
        room_wait_s = 0.0
        time.sleep(max(0.0, start_at + offset_s - time.time()))
        try:
            while time.time() < end_at:
                t0 = time.perf_counter()
                room = writer.wait_for_room(batch, 1.0)
                room_wait_s += time.perf_counter() - t0
                if not room:
                    continue
                version = self.version  # one batch, one version (ActorWorker's model_lock)
                time.sleep(batch / rate)  # the GPU samples and scores the batch
                trajs = [replace(self.template, version=version, seed=self.next_seed + i)
                         for i in range(batch)]
                self.next_seed += batch
                tw = time.perf_counter()
                try:
                    writer.write_many(trajs, timeout_s=max(0.1, drain_until - time.time()))
                except ReplayTimeout:
                    return {"done": done, "write_ms": write_ms, "room_wait_s": room_wait_s}
                write_ms += [(time.perf_counter() - tw) * 1e3 / batch] * batch  # per record
                done.append((time.time(), batch))
        finally:
            writer.close()
        return {"done": done, "write_ms": write_ms, "room_wait_s": room_wait_s}

    def set_weights(self, refs: list) -> dict:
        """What `ActorWorker.set_weights` + `Actor.apply_weights` cost: fetch, both checksums,
        copy into the adapter's tensors (the manifest's checksum is `adapter_manifest`'s, computed
        without importing diffusers into every actor)."""
        t0 = time.perf_counter()
        blob = ray.get(refs[0])
        t1 = time.perf_counter()
        packet = decode_packet(blob)
        if packet.manifest["checksum"] != checksum("adapter", str(packet.version),
                                                    packet.state_dict):
            raise ValueError(f"adapter v{packet.version} does not match its manifest")
        for k, v in packet.state_dict.items():
            if k in self.lora:
                self.lora[k].copy_(v)
            else:
                self.lora[k] = v.clone()
        self.version = packet.version
        t2 = time.perf_counter()
        return {"time": time.time(), "fetch_ms": (t1 - t0) * 1e3, "apply_ms": (t2 - t1) * 1e3}


class SyntheticLearner:
    """Draws batches as the learner does and publishes SD-1.5's adapter; no gradient step."""

    def __init__(self, cfg, namespace: str) -> None:
        self.pub = Publisher(cfg, namespace)  # SD-1.5 LoRA shapes, the runtime's RayPublisher
        self.version = 0

    def pid(self) -> int:
        return os.getpid()

    def adapter_mb(self) -> float:
        return self.pub.megabytes()

    def publish(self, version: int):
        self.version = version
        return self.pub.publish(version)

    def run(self, replay: ReplayConfig, namespace: str, batch: int, step_s: float,
            wait_s: float | None, measure_from: float, end_at: float, drain_until: float) -> dict:
        """Sample until drain_until (so the actors' last batches get in); latencies of the
        draws that began in [measure_from, end_at). A draw waits at most `wait_s` for its whole
        batch (None: no limit), then its records are lost, as in `LearnerWorker.try_step`."""
        sampler = ReplaySampler(replay, namespace=namespace)
        lat_ms: list[float] = []
        service_ms: list[float] = []
        timeouts = 0
        try:
            while time.time() < drain_until:
                began = time.time()
                t0, b0 = time.perf_counter(), sampler.counters.blocked_s
                try:
                    sampler.sample(batch, min_version=sampler.min_version_for(self.version),
                                   timeout_s=max(0.05, min(wait_s or 1e9, drain_until - began)))
                except ReplayTimeout:
                    timeouts += began < end_at
                    continue
                dt = time.perf_counter() - t0
                if measure_from <= began < end_at:
                    lat_ms.append(dt * 1e3)
                    service_ms.append((dt - (sampler.counters.blocked_s - b0)) * 1e3)
                if step_s:
                    time.sleep(step_s)  # the learner's GPU step
            stale_waits = sampler.counters.stale_waits
        finally:
            sampler.close()
        return {"lat_ms": lat_ms, "service_ms": service_ms, "timeouts": timeouts,
                "stale_waits": stale_waits}


def pct(xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile (None for no data)."""
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def r1(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            c = psutil.Process(pid).cpu_times()
            total += c.user + c.system
        except psutil.Error:
            pass
    return total


class Window:
    """CPU and limiter counters at the start and end of a phase's measured window."""

    def __init__(self, pids: dict[str, list[int]], counter: ReplaySampler) -> None:
        self.pids, self.counter = pids, counter
        self.start: dict = {}
        self.end: dict = {}

    def snap(self) -> dict:
        return {"t": time.time(), "cpu": {k: cpu_seconds(v) for k, v in self.pids.items()},
                **self.counter.rate_limiter.counts()}

    def watch(self, t_from: float, t_to: float) -> threading.Thread:
        def run() -> None:
            time.sleep(max(0.0, t_from - time.time()))
            psutil.cpu_percent(None)
            self.start = self.snap()
            time.sleep(max(0.0, t_to - time.time()))
            self.end = self.snap()
            self.end["machine_pct"] = psutil.cpu_percent(None)

        th = threading.Thread(target=run, daemon=True)
        th.start()
        return th


def actor_rate(done: list[tuple[float, int]], measure_from: float) -> float | None:
    """Trajectories/s of whole periods: batches finished after the first one finished in the
    window, over the time since it (None: fewer than two batches finished there)."""
    ts = [(t, n) for t, n in done if t >= measure_from]
    if len(ts) < 2:
        return None
    return sum(n for _, n in ts[1:]) / (ts[-1][0] - ts[0][0])


def run_phase(args, actors: list, learner, learner_pid: int, redis, n: int, shards: int,
              version0: int) -> tuple[dict, int]:
    urls = [r.url for r in redis[:shards]]
    replay = ReplayConfig(
        url=urls[0], shards=urls[1:], capacity=args.capacity,
        min_size_to_sample=args.min_size, samples_per_insert=args.samples_per_insert,
        error_buffer=args.error_buffer, max_staleness=args.max_staleness, timeout_s=30.0,
    )
    ns = f"scale-s{shards}-a{n}"
    period = args.batch / args.rate
    warmup = max(args.warmup_s, 1.5 * period)
    start_at = time.time() + 0.5
    measure_from = start_at + warmup
    end_at = measure_from + args.phase_s
    drain_until = end_at + period + 2.0  # the learner draws on while the last batches land
    counter = ReplaySampler(replay, namespace=ns)
    counter.clear()
    pids = {"learner": [learner_pid], "actors": [a[1] for a in actors[:n]],
            **{f"redis{i}": [r.proc.pid] for i, r in enumerate(redis[:shards])}}
    window = Window(pids, counter)
    watcher = window.watch(measure_from, end_at)
    lref = learner.run.remote(replay, ns, args.learner_batch, args.learner_step_s,
                              args.learner_wait_s, measure_from, end_at, drain_until)
    arefs = [h.run.remote(replay, ns, args.rate, args.batch, period * i / n, start_at, end_at,
                          drain_until)
             for i, (h, _) in enumerate(actors[:n])]
    bcast: list[float] = []
    version = version0
    next_pub = start_at + args.publish_every_s
    while True:
        time.sleep(max(0.0, next_pub - time.time()))
        if time.time() >= end_at:
            break
        version += 1
        published = ray.get(learner.publish.remote(version))
        acks = ray.get([h.set_weights.remote([published.ref]) for h, _ in actors[:n]])
        if published.started >= measure_from:
            bcast.append((max(a["time"] for a in acks) - published.started) * 1e3)
        next_pub = max(next_pub + args.publish_every_s, time.time())
    done = ray.get(arefs)
    lstats = ray.get(lref)
    watcher.join()
    counter.clear()
    counter.close()

    rates = [actor_rate(d["done"], measure_from) for d in done]
    if any(x is None for x in rates):  # a phase too short for two batches: all of it
        rates = [sum(b for _, b in d["done"]) / (end_at - start_at) for d in done]
    s, e = window.start, window.end
    dt = e["t"] - s["t"]
    cpu = {k: (e["cpu"][k] - s["cpu"][k]) / dt * 100 for k in pids}
    inserts = e["inserts"] - s["inserts"]
    offered = n * args.rate
    achieved = sum(rates)
    redis_cpu_s = sum(e["cpu"][k] - s["cpu"][k] for k in pids if k.startswith("redis"))
    row = {
        "shards": shards,
        "actors": n,
        "offered_per_s": round(offered, 2),
        "inserts_per_s": round(achieved, 2),
        "keeps_up_ratio": round(achieved / offered, 3),
        "server_inserts_per_s": round(inserts / dt, 2),
        "draws_per_s": round((e["samples"] - s["samples"]) / dt, 2),
        "sample_p50_ms": r1(pct(lstats["lat_ms"], 0.5)),
        "sample_p95_ms": r1(pct(lstats["lat_ms"], 0.95)),
        "sample_service_p50_ms": r1(pct(lstats["service_ms"], 0.5)),
        "sample_service_p95_ms": r1(pct(lstats["service_ms"], 0.95)),
        "samples": len(lstats["lat_ms"]),
        "sample_timeouts": lstats["timeouts"],
        "broadcast_p50_ms": r1(pct(bcast, 0.5)),
        "broadcasts": len(bcast),
        "write_p50_ms": r1(pct([x for d in done for x in d["write_ms"]], 0.5)),
        "room_wait_s": round(sum(d["room_wait_s"] for d in done), 2),
        "machine_cpu_pct": round(e["machine_pct"], 1),
        "redis_cpu_pct": [round(cpu[f"redis{i}"], 1) for i in range(shards)],
        "learner_cpu_pct": round(cpu["learner"], 1),
        "actors_cpu_pct": round(cpu["actors"], 1),
        "redis_cpu_ms_per_insert": round(redis_cpu_s / inserts * 1e3, 2) if inserts else None,
        "learner_cpu_ms_per_draw": (
            round(cpu["learner"] * dt / 100 / (e["samples"] - s["samples"]) * 1e3, 2)
            if e["samples"] > s["samples"] else None
        ),
    }
    row["keeps_up"] = row["keeps_up_ratio"] >= KEEPS_UP
    row["cpu_bound_here"] = row["machine_cpu_pct"] >= CPU_BOUND_PCT
    return row, version


def saturation(rows: list[dict]) -> dict:
    """Per shard count: the most actors that kept up (every smaller count did too), the first
    that did not, and whether that one ran out of this machine's CPU rather than the replay."""
    out = {}
    for shards in sorted({r["shards"] for r in rows}):
        mine = sorted((r for r in rows if r["shards"] == shards), key=lambda r: r["actors"])
        ok, first_bad = 0, None
        for r in mine:
            if not r["keeps_up"]:
                first_bad = r
                break
            ok = r["actors"]
        out[str(shards)] = {
            "keeps_up_to": ok,
            "first_saturated": first_bad["actors"] if first_bad else None,
            "saturated_cpu_bound_here": first_bad["cpu_bound_here"] if first_bad else None,
        }
    return out


def projection(rows: list[dict], rate: float, spi: float, budget_ms: float) -> dict:
    """GPUs one Redis core, one learner core and the broadcast could feed, from per-unit costs
    measured at the largest actor count (Redis and learner CPU per record; broadcast ms per
    actor from a least-squares line through the 1-shard phases)."""
    top = max(rows, key=lambda r: (r["actors"], -r["shards"]))
    redis_ms = top["redis_cpu_ms_per_insert"]
    learner_ms = top["learner_cpu_ms_per_draw"]
    pts = [(r["actors"], r["broadcast_p50_ms"]) for r in rows
           if r["shards"] == 1 and r["broadcast_p50_ms"] is not None]
    slope = icept = None
    if len({n for n, _ in pts}) >= 2:
        mx = statistics.fmean(n for n, _ in pts)
        my = statistics.fmean(y for _, y in pts)
        slope = sum((n - mx) * (y - my) for n, y in pts) / sum((n - mx) ** 2 for n, _ in pts)
        icept = my - slope * mx
    return {
        "from_actors": top["actors"],
        "redis_cpu_ms_per_insert": redis_ms,
        "gpus_per_redis_core": round(1e3 / redis_ms / rate, 1) if redis_ms else None,
        "learner_cpu_ms_per_draw": learner_ms,
        "gpus_per_learner_core": round(1e3 / learner_ms / spi / rate, 1) if learner_ms else None,
        "broadcast_ms_per_actor": round(slope, 2) if slope is not None else None,
        "broadcast_ms_at_0": round(icept, 1) if icept is not None else None,
        "gpus_within_broadcast_budget": (
            int((budget_ms - icept) / slope) if slope and slope > 0 else None
        ),
        "broadcast_budget_ms": budget_ms,
    }


def phase_line(r: dict) -> str:
    return (
        f"shards {r['shards']} actors {r['actors']:2d}: inserts {r['inserts_per_s']:6.2f}/s of "
        f"{r['offered_per_s']:6.2f} offered ({r['keeps_up_ratio']:.0%}), draws "
        f"{r['draws_per_s']:6.1f}/s, sample p50/p95 {r['sample_p50_ms']}/{r['sample_p95_ms']} ms "
        f"(service {r['sample_service_p50_ms']}/{r['sample_service_p95_ms']}; {r['samples']} "
        f"draws, {r['sample_timeouts']} timed out), broadcast p50 {r['broadcast_p50_ms']} ms "
        f"({r['broadcasts']}), write p50 {r['write_p50_ms']} ms; CPU machine "
        f"{r['machine_cpu_pct']}%, redis {r['redis_cpu_pct']}%, learner {r['learner_cpu_pct']}%, "
        f"actors {r['actors_cpu_pct']}%" + ("  [CPU-bound here]" if r["cpu_bound_here"] else "")
    )


def projection_line(p: dict, spi: float) -> str:
    return (
        f"projection (one core each for Redis and the learner): a Redis shard costs "
        f"{p['redis_cpu_ms_per_insert']} ms CPU per insert (its draws included) -> "
        f"~{p['gpus_per_redis_core']} GPUs per shard; the learner {p['learner_cpu_ms_per_draw']} ms"
        f" CPU per drawn record -> ~{p['gpus_per_learner_core']} GPUs at samples_per_insert "
        f"{spi:g}; broadcast p50 grows {p['broadcast_ms_per_actor']} ms per actor from "
        f"{p['broadcast_ms_at_0']} ms -> {p['gpus_within_broadcast_budget']} actors within "
        f"{p['broadcast_budget_ms']:.0f} ms (one node: object store in shared memory)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1/2 actors, short phases (~30-40 s)")
    ap.add_argument("--actors", default="1,2,4,8,16", help="simulated actor counts")
    ap.add_argument("--shards", default="1,2", help="Redis shard counts")
    ap.add_argument("--rate", type=float, default=H200_BATCH / H200_BATCH_S,
                    help="trajectories/s per actor (default: the H200's, 16 per 4.9 s)")
    ap.add_argument("--batch", type=int, default=8, help="trajectories per actor batch")
    ap.add_argument("--num-steps", type=int, default=50, help="DDIM steps per trajectory")
    ap.add_argument("--keep-steps", type=int, default=None,
                    help="transitions stored per trajectory (sampler.keep_steps; default all)")
    ap.add_argument("--phase-s", type=float, default=10.0, help="measured seconds per phase")
    ap.add_argument("--warmup-s", type=float, default=3.0, help="unmeasured seconds per phase")
    ap.add_argument("--learner-batch", type=int, default=32, help="records per learner draw")
    ap.add_argument("--learner-step-s", type=float, default=0.0,
                    help="seconds the learner spends per batch after drawing it (its GPU step)")
    ap.add_argument("--learner-wait-s", type=float, default=None,
                    help="seconds a draw waits for its whole batch, then drops what it drew "
                    "(the runtime's runtime.learner_wait_s; default: no limit)")
    ap.add_argument("--publish-every-s", type=float, default=1.0)
    ap.add_argument("--capacity", type=int, default=128, help="replay slots (all shards)")
    ap.add_argument("--samples-per-insert", type=float, default=1.0)
    ap.add_argument("--error-buffer", type=float, default=32.0)
    ap.add_argument("--min-size", type=int, default=32, help="replay.min_size_to_sample")
    ap.add_argument("--max-staleness", type=int, default=4)
    args = ap.parse_args()
    if args.quick:
        args.actors, args.phase_s, args.warmup_s, args.batch = "1,2", 3.0, 1.0, 4
        args.min_size, args.learner_batch = 4, 4
    counts = sorted(int(x) for x in args.actors.split(","))
    shard_counts = sorted(int(x) for x in args.shards.split(","))
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    rows: list[dict] = []
    with redis_servers(max(shard_counts)) as redis, local_ray(psutil.cpu_count()):
        cfg = load_config(None, [f"replay.url={redis[0].url}", "runtime.num_threads=1",
                                 "replay.namespace=scale"])
        learner = ray.remote(SyntheticLearner).options(num_cpus=0.01, max_concurrency=2).remote(
            cfg, "scale-weights")
        remote_actor = ray.remote(SyntheticActor).options(num_cpus=0.01, max_concurrency=2)
        handles = [remote_actor.remote(i, args.num_steps, args.keep_steps)
                   for i in range(max(counts))]
        t0 = time.perf_counter()
        learner_pid, adapter_mb = ray.get([learner.pid.remote(), learner.adapter_mb.remote()])
        actors = list(zip(handles, ray.get([h.pid.remote() for h in handles]), strict=True))
        record_mb = ray.get(handles[0].record_bytes.remote()) / 1e6
        print(f"{len(actors)} actor processes and the learner up in "
              f"{time.perf_counter() - t0:.0f} s; record {record_mb:.2f} MB "
              f"({args.num_steps} steps, {args.keep_steps or 'all'} kept, 4x64x64 fp16), "
              f"adapter {adapter_mb:.2f} MB; {args.rate:.2f} trajectories/s per actor in "
              f"batches of {args.batch}; learner draws {args.learner_batch}, publishes every "
              f"{args.publish_every_s:g} s; samples_per_insert {args.samples_per_insert:g}, "
              f"error_buffer {args.error_buffer:g}, {psutil.cpu_count()} CPUs here", flush=True)
        version = 0
        for shards in shard_counts:
            for n in counts:
                row, version = run_phase(args, actors, learner, learner_pid, redis, n, shards,
                                         version)
                rows.append(row)
                print(phase_line(row), flush=True)
        for h in handles:
            ray.kill(h)
        ray.kill(learner)
    sat = saturation(rows)
    proj = projection(rows, args.rate, args.samples_per_insert, args.publish_every_s * 1e3)
    for shards, s in sat.items():
        bad = s["first_saturated"]
        print(f"{shards} shard(s): kept up with {s['keeps_up_to']} actor(s)"
              + (f"; fell behind at {bad}"
                 + (" (this machine's CPU was saturated: a limit of this box, not of the "
                    "replay)" if s["saturated_cpu_bound_here"] else "")
                 if bad else f"; never fell behind up to {max(counts)}"))
    print(projection_line(proj, args.samples_per_insert))
    print(json.dumps({
        "saturation": sat,
        "projection": proj,
        "per_actor_rate": round(args.rate, 3),
        "record_mb": round(record_mb, 3),
        "adapter_mb": round(adapter_mb, 2),
        "cpus": psutil.cpu_count(),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "results": rows,
    }))


if __name__ == "__main__":
    main()
