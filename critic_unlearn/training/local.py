"""The single-process trainer: sample -> reward -> replay (Redis) -> learn, no Ray.

The debugging and benchmarking path; the Ray runtime runs the same Actor and Learner objects.
The loop respects the replay rate limiter exactly: the learner samples while the limiter grants
samples; when it does not (too few fresh records), the actor inserts another batch.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from critic_unlearn.codec import encode_state_dict
from critic_unlearn.config import LoraConfig, RunConfig, load_config
from critic_unlearn.io_utils import announce_run_folder, atomic_write_bytes
from critic_unlearn.learner.checkpoint import load_checkpoint, save_checkpoint
from critic_unlearn.learner.publisher import CallbackPublisher
from critic_unlearn.replay import RedisServer, ReplaySampler, ReplayTimeout, ReplayWriter
from critic_unlearn.training.critic_pretrain import use_pretrained_critic
from critic_unlearn.training.metrics import MetricsLogger
from critic_unlearn.training.plots import plot_run
from critic_unlearn.training.setup import (
    TrainResult,
    build_actor,
    build_learner,
    prepare_run_dir,
)
from critic_unlearn.training.snapshots import save_snapshot
from critic_unlearn.types import Batch

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoints/latest.safetensors"


def forget_reward_mean(trajs) -> float:
    """Mean raw reward of the forget-role trajectories: the curve unlearning should raise."""
    forget = [t.reward for t in trajs if t.role == "forget"]
    return sum(forget) / len(forget) if forget else float("nan")


def ua_proxy(trajs) -> float:
    """Share of forget trajectories with positive reward: for clip_concept with alpha = 1 that is
    'the reward CLIP finds the anchor closer than the concept'. A proxy, not the judge's UA."""
    forget = [t.reward for t in trajs if t.role == "forget"]
    return sum(r > 0 for r in forget) / len(forget) if forget else float("nan")


def export_adapter(run_dir: Path, packet, lora: LoraConfig | None = None) -> Path:
    """RUN/adapter/: our adapter.safetensors (manifest, checksum), and the same tensors in
    diffusers' LoRA format and peft's (critic_unlearn.export), so `pipe.load_lora_weights(RUN/
    adapter)` and `PeftModel.from_pretrained(unet, RUN/adapter)` work. `lora` defaults to the
    run's config.yaml. Returns the path of adapter.safetensors."""
    from critic_unlearn.export import write_adapter_formats

    path = Path(run_dir) / "adapter" / "adapter.safetensors"
    atomic_write_bytes(path, encode_state_dict(packet.state_dict, packet.manifest))
    try:
        if lora is None:
            lora = load_config(Path(run_dir) / "config.yaml", []).lora
        write_adapter_formats(
            path.parent, packet.state_dict, lora, packet.manifest.get("base_model")
        )
    except Exception as e:  # adapter.safetensors is safe; the standard formats can be redone
        log.warning(
            "could not write the diffusers/peft copies of %s (%s: %s); write them with "
            "`critic-unlearn export %s`", path, type(e).__name__, e, run_dir
        )
    return path


@contextlib.contextmanager
def replay_server(cfg: RunConfig):
    """replay.url = "auto": a private redis-server for this run, stopped afterwards."""
    if cfg.replay.url != "auto":
        yield cfg
        return
    server = RedisServer(die_with_parent=True).start()
    try:
        yield cfg.model_copy(update={"replay": cfg.replay.model_copy(update={"url": server.url})})
    finally:
        server.stop()


def train_local(cfg: RunConfig, console: Console | None = None) -> TrainResult:
    console = console or Console(stderr=True)
    run_dir = prepare_run_dir(cfg).absolute()
    announce_run_folder(run_dir)
    cfg = use_pretrained_critic(cfg, run_dir, console)
    with replay_server(cfg) as cfg:
        return _train(cfg, run_dir, console)


def _train(cfg: RunConfig, run_dir: Path, console: Console) -> TrainResult:
    if cfg.runtime.num_threads:
        torch.set_num_threads(cfg.runtime.num_threads)
    namespace = cfg.replay.namespace or run_dir.name
    actor = build_actor(cfg, actor_id=0)
    learner = build_learner(cfg, CallbackPublisher(actor.apply_weights))
    writer = ReplayWriter(cfg.replay, namespace=namespace)
    sampler = ReplaySampler(cfg.replay, namespace=namespace)
    metrics = MetricsLogger(run_dir)
    trajectories = 0
    ckpt = run_dir / CHECKPOINT
    if ckpt.exists():
        state = load_checkpoint(ckpt)
        learner.load_state_dict(state["learner"])
        actor.apply_weights(learner.weights())
        actor.next_seed = int(state["actor"]["next_seed"])
        actor.rng.set_state(state["actor"]["rng"])
        trajectories = int(state["trajectories"])
        if sampler.size() >= cfg.replay.min_size_to_sample:
            sampler.rate_limiter.load_state_dict(state["replay_limiter"])
        else:  # the buffer did not survive (private server): count afresh
            sampler.rate_limiter.reset()
        console.print(
            f"resumed from {ckpt} at learner step {learner.steps}, "
            f"version {learner.version}, {trajectories} trajectories"
        )
    else:
        sampler.clear()

    def checkpoint() -> None:
        packet = learner.weights()
        save_snapshot(run_dir, learner.steps, trajectories, packet.state_dict, packet.manifest)
        save_checkpoint(
            ckpt,
            {
                "learner": learner.state_dict(),
                "replay_limiter": sampler.rate_limiter.state_dict(),
                "actor": {"next_seed": actor.next_seed, "rng": actor.rng.get_state()},
                "trajectories": trajectories,
            },
        )

    lc = cfg.learner
    t0 = time.perf_counter()
    last: dict[str, float] = {}
    recent_reward, recent_ua, recent_forget = float("nan"), float("nan"), float("nan")
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn(
            "step {task.completed:.0f}/{task.total:.0f} | traj {task.fields[traj]} | "
            "reward {task.fields[reward]:.3f} | UA proxy {task.fields[ua]:.2f} | "
            "{task.fields[tps]:.1f} traj/s | v{task.fields[version]}"
        ),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(
            "unlearning",
            total=lc.max_steps,
            completed=learner.version,
            traj=trajectories,
            reward=float("nan"),
            ua=float("nan"),
            tps=0.0,
            version=learner.version,
        )
        while learner.version < lc.max_steps:  # policy updates; critic warm-up on top
            try:
                records = sampler.sample(
                    lc.batch_size,
                    min_version=sampler.min_version_for(learner.version),
                    timeout_s=0.0,
                )
            except ReplayTimeout:  # not enough fresh records: the actor must sample more
                trajs = actor.sample_batch()
                for t in trajs:
                    writer.write(t)
                trajectories += len(trajs)
                recent_reward = sum(t.reward for t in trajs) / len(trajs)
                recent_ua = ua_proxy(trajs)
                recent_forget = forget_reward_mean(trajs)
                progress.update(
                    task,
                    traj=trajectories,
                    reward=recent_reward,
                    ua=recent_ua,
                    tps=trajectories / max(time.perf_counter() - t0, 1e-9),
                )
                continue
            batch = Batch.from_trajectories([r.trajectory for r in records])
            last = learner.step(batch)
            last.update(
                {
                    "actor/trajectories": float(trajectories),
                    "actor/reward_mean": recent_reward,
                    "actor/ua_proxy": recent_ua,
                    "actor/forget_reward_mean": recent_forget,
                    "actor/trajectories_per_s": trajectories / max(time.perf_counter() - t0, 1e-9),
                    "replay/size": float(sampler.size()),
                }
            )
            metrics.log(learner.steps, last)
            if learner.steps % lc.checkpoint_every == 0:
                checkpoint()
            progress.update(task, completed=learner.version, version=learner.version)
    checkpoint()
    export_adapter(run_dir, learner.weights())
    metrics.close()
    plot_run(run_dir)
    writer.close()
    sampler.close()
    return TrainResult(
        run_dir, trajectories, learner.steps, learner.version, time.perf_counter() - t0, last
    )
