"""Learner throughput with 1 and N data-parallel learner workers (learner.num_workers).

A private Redis replay is pre-filled with trajectories sampled by the run's own actor (default:
the embedded toy world's forget-red scenario, critic untrained); then one learner
group per worker count (the run's own: runtime/learner_group.py, Ray actors in one
torch.distributed group, gloo on CPUs) steps on it with nothing else running: no actors, a rate
limiter that never holds the learner, a staleness bound that never bites. All groups are up at
once and step in turn (bench/harness.py `alternate`), so each sees the same load; one timed call
is one group step: draw from Redis, gather the batch statistics, forward, backward, gradient
all-reduce, optimiser step, publish. One torch thread per worker: on the 2-core machine two
workers have a core each while the other group waits. Last line: JSON with `scaling_2` =
trajectories learned per second with 2 workers / with 1.

    python -m bench.micro.learner_scale                         # toy world, CPU, 1 and 2
    python -m bench.micro.learner_scale --sd15 --workers 1,2,4  # SD-1.5 shapes, a GPU each

The tiny random test model shows no scaling at all (a step on 16 or on 32 trajectories takes the
same 0.9 s: per-call overhead, not arithmetic, is its cost), so the CPU default is the toy world.
Its UNet on one CPU thread costs ~30 ms + ~8 ms per row per CFG-doubled forward and backward, and
a row is cheaper in a larger call (16 rows 170 ms, 32 rows 274 ms), so the batch each worker
keeps decides how close to 2 the ratio gets (docs/benchmarks.md has the figures).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable

import ray
import torch

from bench import REPO
from bench.harness import alternate, emit, print_runs
from bench.models import sd15_shaped_model
from bench.stress._cluster import local_ray
from critic_unlearn.config import RunConfig, load_config
from critic_unlearn.diffusion.tiny import tiny_clip
from critic_unlearn.replay import RedisServer, ReplayWriter
from critic_unlearn.rewards.openclip_loading import save_open_clip
from critic_unlearn.runtime.learner_group import LearnerGroup
from critic_unlearn.training.setup import build_actor


def prefill(cfg: RunConfig, n: int) -> None:
    """`n` trajectories sampled and scored by the run's actor, in the run's replay."""
    actor = build_actor(cfg, 0)
    with torch.no_grad():
        trajs = actor.sample_batch(n)
    with ReplayWriter(cfg.replay) as w:
        w.write_many(trajs)


def learner_group(cfg: RunConfig, workers: int) -> tuple[LearnerGroup, Callable[[], None]]:
    """A group of `workers` learner workers on the pre-filled replay, and one step of it."""
    learner = cfg.learner.model_copy(update={"num_workers": workers})
    group = LearnerGroup(cfg.model_copy(update={"learner": learner}), cfg.replay.namespace)
    ray.get(group.joined)
    ray.get(group.call("setup", None, restart=True))  # restart: keep the pre-filled replay

    def step() -> None:
        report = ray.get(group.call("try_step", 30.0))[0]
        if not report.stepped:
            raise RuntimeError(f"{workers} learner worker(s) did not step: {report.reason}")
        step_s.setdefault(workers, []).append(report.step_s)

    return group, step


step_s: dict[int, list[float]] = {}  # rank 0's Learner.step time of every call (no draw, no I/O)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2", help="worker counts, comma separated; the first "
                    "is the baseline")
    ap.add_argument("--repeats", type=int, default=12, help="timed steps per group")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64, help="learner.batch_size and "
                    "learner.minibatch_size (global): one optimiser step per learner step")
    ap.add_argument("--sd15", action="store_true", help="SD-1.5 shapes, one GPU per worker")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides")
    args = ap.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as redis:
        if args.sd15:
            import open_clip

            model = sd15_shaped_model(tmp + "/m")
            clip_dir = save_open_clip(
                tiny_clip(0, open_clip.get_model_config("ViT-B-32"), size=224), tmp + "/clip")
            base = REPO / "configs" / "tiny_run.yaml"
            shape = [f"model.pretrained={model}", f"reward.clip_model={clip_dir}",
                     "sampler.num_steps=50", "learner.train_steps=4", "learner.gpus=1",
                     "model.dtype=float16", "runtime.device=cuda"]
        else:
            base = REPO / "configs" / "toy_forget_red.yaml"
            shape = ["runtime.device=cpu", "critic.init=null"]
        cfg = load_config(base, [
            f"replay.url={redis.url}", "replay.namespace=learner-scale",
            "replay.capacity=512", "replay.min_size_to_sample=1",
            "replay.samples_per_insert=1000000",
            "replay.error_buffer=1000000000", "replay.max_staleness=1000000",
            f"learner.batch_size={args.batch}", f"learner.minibatch_size={args.batch}",
            "critic.warmup_steps=0", "runtime.num_threads=1", "runtime.learner_cpus=1",
            *shape, *args.overrides,
        ])
        prefill(cfg, 2 * args.batch)
        with local_ray(sum(counts) if args.sd15 else max(2, sum(counts))):
            groups = {str(w): learner_group(cfg, w) for w in counts}
            try:
                timings = alternate({w: step for w, (_, step) in groups.items()}, args.repeats,
                                    warmup=args.warmup)
            finally:
                for group, _ in groups.values():
                    group.kill()
    device = "cuda" if args.sd15 else "cpu"
    print(f"model={'sd15-shapes' if args.sd15 else 'tiny'} device={device} batch={args.batch} "
          f"(global), {args.repeats} timed steps per group after {args.warmup} warm-up")
    print_runs(timings, width=4)
    for w, runs in step_s.items():
        print(f"{w:>4}: Learner.step alone, median {statistics.median(runs):.3f} s")
    rate = {w: args.batch / timings.median(w) for w in timings.times}
    base = rate[str(counts[0])]
    out: dict[str, object] = {f"traj_per_s_{w}": round(r, 3) for w, r in rate.items()}
    out.update({f"scaling_{w}": round(r / base, 3) for w, r in rate.items()
                if w != str(counts[0])})
    out.update({"batch": args.batch, "device": device, "repeats": args.repeats})
    emit(out)


if __name__ == "__main__":
    main()
