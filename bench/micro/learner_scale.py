"""Learner throughput with 1 and N data-parallel learner workers (learner.num_workers).

A private Redis replay is pre-filled with trajectories sampled by the model; then one learner
group per worker count (the run's own: runtime/learner_group.py, Ray actors in one
torch.distributed group, gloo on CPUs) steps on it with nothing else running: no actors, a rate
limiter that never holds the learner, a staleness bound that never bites. All groups are up at
once and step in turn (bench/harness.py `alternate`), so each sees the same load; one timed call
is one group step: draw from Redis, gather the batch statistics, forward, backward, gradient
all-reduce, optimiser step, publish. One torch thread per worker: on the 2-core machine two
workers have a core each while the other group waits. Last line: JSON with `scaling_2` =
trajectories learned per second with 2 workers / with 1.

    python -m bench.micro.learner_scale                         # tiny model, CPU, 1 and 2
    python -m bench.micro.learner_scale --sd15 --workers 1,2,4  # SD-1.5 shapes, a GPU each
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import ray
import torch

from bench import REPO
from bench.harness import alternate, emit, print_runs
from bench.models import sd15_shaped_model, tiny_clip_dir
from bench.stress._cluster import local_ray
from critic_unlearn.config import RunConfig, load_config
from critic_unlearn.diffusion.loading import load_components
from critic_unlearn.diffusion.sampling import PromptSpec, sample_trajectories
from critic_unlearn.diffusion.tiny import build_tiny_model, tiny_clip
from critic_unlearn.replay import RedisServer, ReplayWriter
from critic_unlearn.rewards.openclip_loading import save_open_clip
from critic_unlearn.runtime.learner_group import LearnerGroup
from critic_unlearn.types import SamplerSettings


def prefill(cfg: RunConfig, n: int) -> None:
    """`n` trajectories of the run's sampler settings in the run's replay, rewards 0..1."""
    s = cfg.sampler
    comps = load_components(cfg.model.pretrained, dtype="float32", device="cpu")
    texts = [f"a {c} {shape}" for c in ("red", "blue") for shape in ("circle", "square")]
    specs = [PromptSpec(f"p{i}", t, "forget" if "red" in t else "retain")
             for i, t in enumerate(texts * (n // len(texts)))]
    with torch.no_grad():
        trajs = sample_trajectories(comps, specs, list(range(len(specs))),
                                    SamplerSettings(s.num_steps, s.eta, s.guidance_scale),
                                    keep_steps=s.keep_steps, decode=False)
    with ReplayWriter(cfg.replay) as w:
        for i, t in enumerate(trajs):
            w.write(t.with_reward((i % 5) / 4))


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

    return group, step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2", help="worker counts, comma separated; the first "
                    "is the baseline")
    ap.add_argument("--repeats", type=int, default=12, help="timed steps per group")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16, help="learner.batch_size (global)")
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
            shape = ["sampler.num_steps=50", "learner.train_steps=4", "learner.gpus=1",
                     "model.dtype=float16", "runtime.device=cuda"]
        else:
            model, clip_dir = str(build_tiny_model(tmp + "/m")), tiny_clip_dir(Path(tmp))
            shape = ["sampler.num_steps=10", "learner.train_steps=4", "runtime.device=cpu"]
        cfg = load_config(REPO / "configs" / "tiny_run.yaml", [
            f"model.pretrained={model}", f"reward.clip_model={clip_dir}",
            f"replay.url={redis.url}", "replay.namespace=learner-scale",
            "replay.capacity=64", "replay.samples_per_insert=1000000",
            "replay.error_buffer=1000000000", "replay.max_staleness=1000000",
            f"learner.batch_size={args.batch}", f"learner.minibatch_size={args.batch}",
            "critic.warmup_steps=0", "runtime.num_threads=1", "runtime.learner_cpus=1",
            *shape, *args.overrides,
        ])
        prefill(cfg, 32)
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
    rate = {w: args.batch / timings.median(w) for w in timings.times}
    base = rate[str(counts[0])]
    out: dict[str, object] = {f"traj_per_s_{w}": round(r, 3) for w, r in rate.items()}
    out.update({f"scaling_{w}": round(r / base, 3) for w, r in rate.items()
                if w != str(counts[0])})
    out.update({"batch": args.batch, "device": device, "repeats": args.repeats})
    emit(out)


if __name__ == "__main__":
    main()
