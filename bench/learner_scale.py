"""Learner throughput with 1 and N data-parallel learner workers (learner.num_workers).

A private Redis replay is pre-filled with trajectories sampled by the model; then, for each
worker count, the run's own learner group (runtime/learner_group.py: Ray actors, one
torch.distributed group, gloo on CPUs) steps on it with nothing else running: no actors, a rate
limiter that never holds the learner, a staleness bound that never bites. What is timed is the
group's `try_step` calls after warm-up: draw from Redis, gather the batch statistics, forward,
backward, gradient all-reduce, optimiser step, publish. One torch thread per worker, so on the
2-core machine two workers have a core each. Last line: JSON with `scaling_2` = trajectories
learned per second with 2 workers / with 1.

    python -m bench.learner_scale                       # tiny random model, CPU, 1 and 2 workers
    python -m bench.learner_scale --sd15 --workers 1,2,4  # SD-1.5 shapes, one GPU per worker
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import ray
import torch

from bench._cluster import local_ray
from critic_unlearn.config import load_config
from critic_unlearn.diffusion.loading import load_components
from critic_unlearn.diffusion.sampling import PromptSpec, sample_trajectories
from critic_unlearn.diffusion.tiny import build_tiny_model, tiny_clip
from critic_unlearn.replay import RedisServer, ReplayWriter
from critic_unlearn.rewards.openclip_loading import save_open_clip
from critic_unlearn.runtime.learner_group import LearnerGroup
from critic_unlearn.types import SamplerSettings

TINY_RUN = Path(__file__).resolve().parents[1] / "configs" / "tiny_run.yaml"


def prefill(cfg, n: int) -> None:
    """`n` trajectories of the run's sampler settings in the run's replay, rewards 0..1."""
    s = cfg.sampler
    comps = load_components(cfg.model.pretrained, dtype="float32", device="cpu")
    specs = [PromptSpec(f"p{i}", f"a {c} {shape}", "forget" if c == "red" else "retain")
             for i, (c, shape) in enumerate([(c, sh) for c in ("red", "blue")
                                             for sh in ("circle", "square")] * (n // 4))]
    with torch.no_grad():
        trajs = sample_trajectories(comps, specs, list(range(len(specs))),
                                    SamplerSettings(s.num_steps, s.eta, s.guidance_scale),
                                    keep_steps=s.keep_steps, decode=False)
    with ReplayWriter(cfg.replay) as w:
        for i, t in enumerate(trajs):
            w.write(t.with_reward((i % 5) / 4))


def throughput(cfg, workers: int, warmup: int, steps: int) -> tuple[float, list[float]]:
    """Trajectories learned per second by `workers` learner workers, and each step's time."""
    learner = cfg.learner.model_copy(update={"num_workers": workers})
    group = LearnerGroup(cfg.model_copy(update={"learner": learner}), cfg.replay.namespace)
    try:
        ray.get(group.joined)
        ray.get(group.call("setup", None, restart=True))  # restart: keep the pre-filled replay
        times = []
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            reports = ray.get(group.call("try_step", 30.0))
            if not reports[0].stepped:
                raise RuntimeError(f"the learner did not step: {reports[0].reason}")
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    finally:
        group.kill()
    return cfg.learner.batch_size * steps / sum(times), times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2", help="worker counts, comma separated")
    ap.add_argument("--steps", type=int, default=12, help="timed learner steps per count")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16, help="learner.batch_size (global)")
    ap.add_argument("--sd15", action="store_true", help="SD-1.5 shapes, one GPU per worker")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides")
    args = ap.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as redis:
        if args.sd15:
            import open_clip

            from bench.sampler_overhead import sd15_shaped_model

            model = sd15_shaped_model(tmp + "/m")
            clip = tiny_clip(0, open_clip.get_model_config("ViT-B-32"), size=224)
            shape = ["sampler.num_steps=50", "learner.train_steps=4", "learner.gpus=1",
                     "model.dtype=float16", "runtime.device=cuda"]
        else:
            model, clip = str(build_tiny_model(tmp + "/m")), tiny_clip(0)
            shape = ["sampler.num_steps=10", "learner.train_steps=4", "runtime.device=cpu"]
        clip_dir = save_open_clip(clip, tmp + "/clip")
        cfg = load_config(TINY_RUN, [
            f"model.pretrained={model}", f"reward.clip_model={clip_dir}",
            f"replay.url={redis.url}", "replay.namespace=learner-scale",
            "replay.capacity=64", "replay.samples_per_insert=1000000",
            "replay.error_buffer=1000000000", "replay.max_staleness=1000000",
            f"learner.batch_size={args.batch}", f"learner.minibatch_size={args.batch}",
            "critic.warmup_steps=0", "runtime.num_threads=1", "runtime.learner_cpus=1",
            *shape, *args.overrides,
        ])
        prefill(cfg, 32)
        with local_ray(max(2, max(counts))):
            results = {w: throughput(cfg, w, args.warmup, args.steps) for w in counts}
    device = "cuda" if args.sd15 else "cpu"
    print(f"model={'sd15-shapes' if args.sd15 else 'tiny'} device={device} "
          f"batch={args.batch} (global) steps={args.steps} after {args.warmup} warm-up")
    for w, (rate, times) in results.items():
        print(f"{w} worker(s): {rate:.2f} trajectories/s, step median "
              f"{statistics.median(times):.3f} s, runs {[round(t, 3) for t in times]}")
    base = results[counts[0]][0]
    out = {f"traj_per_s_{w}": round(r, 3) for w, (r, _) in results.items()}
    out.update({f"scaling_{w}": round(r / base, 3) for w, (r, _) in results.items()
                if w != counts[0]})
    out.update({"batch": args.batch, "device": device, "steps": args.steps})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
