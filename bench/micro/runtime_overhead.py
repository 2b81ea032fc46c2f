"""One actor's trajectories/s under Ray vs the same actor loop in this process.

Both sides build the same Actor (same tiny model, reward CLIP, batch, seeds, one torch thread)
and write every trajectory to the same private Redis. In-process: `sample_batch` then
`ReplayWriter.write` per trajectory. Under Ray: the runtime's `RayActorWorker.run_batch` (limiter
room check, weights check, sample, score, write) called back to back from the driver, exactly as
the driver's loop does. Rounds alternate so both see the same load on a shared machine. Last line:
JSON with `ratio` = Ray / in-process (target >= 0.9).

    python -m bench.micro.runtime_overhead                 # tiny random model, CPU
    python -m bench.micro.runtime_overhead --rounds 20 --batch 8 --steps 10
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import ray
import torch

from bench.harness import alternate, emit
from bench.models import tiny_clip_dir
from critic_unlearn.config import RunConfig, load_config
from critic_unlearn.diffusion.tiny import build_tiny_model
from critic_unlearn.replay import RedisServer, ReplayWriter
from critic_unlearn.runtime.actor_worker import RayActorWorker
from critic_unlearn.runtime.cluster import local_cluster_kwargs
from critic_unlearn.training.setup import build_actor


def bench_config(root: Path, redis_url: str, batch: int, steps: int) -> RunConfig:
    return load_config(
        None,
        [
            f"model.pretrained={build_tiny_model(root / 'tiny-sd', seed=0)}",
            f"reward.clip_model={tiny_clip_dir(root)}",
            "reward.prompts.forget=[a red circle, a red square]",
            "reward.prompts.retain=[a blue circle, a blue square]",
            f"sampler.num_steps={steps}",
            f"sampler.batch_size={batch}",
            f"replay.url={redis_url}",
            "replay.capacity=512",
            "replay.error_buffer=1e9",  # the limiter never holds the writer: this measures the loop
            "runtime.device=cpu",
            "runtime.num_threads=1",
            "actors.cpus_per_actor=1",
        ],
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20, help="batches per side (after warm-up)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8, help="trajectories per batch")
    ap.add_argument("--steps", type=int, default=10, help="denoising steps per trajectory")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local cluster
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as redis:
        cfg = bench_config(Path(tmp), redis.url, args.batch, args.steps)
        local_actor = build_actor(cfg, 0)
        writer = ReplayWriter(cfg.replay, namespace="bench-local")
        ray.init(**local_cluster_kwargs(2), log_to_driver=False)  # fresh, never a recorded one
        try:
            remote = ray.remote(RayActorWorker).options(num_cpus=1, max_concurrency=2)
            worker = remote.remote(cfg, 0, "bench-ray")
            ray.get(worker.start.remote())

            def in_process() -> None:
                for t in local_actor.sample_batch():
                    writer.write(t)

            def under_ray() -> None:
                report = ray.get(worker.run_batch.remote())
                assert report.written == args.batch, report

            sides = {"local": in_process, "ray": under_ray}
            timings = alternate(sides, args.rounds, warmup=args.warmup)
        finally:
            ray.shutdown()
            writer.close()
    local_tps = args.batch / timings.median("local")
    ray_tps = args.batch / timings.median("ray")
    print(
        f"in-process: {local_tps:.2f} trajectories/s (median batch "
        f"{timings.median('local') * 1e3:.0f} ms); Ray actor: {ray_tps:.2f} trajectories/s "
        f"(median batch {timings.median('ray') * 1e3:.0f} ms); {args.rounds} batches of "
        f"{args.batch} x {args.steps} steps each"
    )
    emit(
        {
            "ratio": round(ray_tps / local_tps, 3),
            "ray_traj_per_s": round(ray_tps, 3),
            "local_traj_per_s": round(local_tps, 3),
            "batch": args.batch,
            "steps": args.steps,
            "rounds": args.rounds,
        }
    )


if __name__ == "__main__":
    main()
