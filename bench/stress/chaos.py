"""Chaos: a Ray run on the local cluster that survives killed actors, a killed learner and a
crashed Redis, and still reaches its budget with whole checkpoints and exact bookkeeping.

A fault thread SIGKILLs a random actor every --actor-every seconds, the learner once (after a
third of the budget, past a checkpoint; with --learner-workers N > 1 the last rank of the
learner group, which takes the whole group back to the checkpoint) and Redis once (after two
thirds; a private server with an fsync'd append-only file, as a replay that must survive a crash
is configured). The run is the embedded toy world with --actors actors, sized so faults land
while it works. After it:

  runs_lost         0 when the run returned at its budget, else 1
  half_checkpoints  checkpoint and snapshot files that do not load whole
  accounting_ok     every insert Redis counted is stored or evicted, nothing is corrupt, no
                    (actor, seed) is stored twice, and the run's own count falls short of the
                    inserts only by what killed actors wrote but never reported (at most one
                    batch per kill)

and the work lost: trajectories written by killed batches, learner steps done again after the
learner's restart. The JSON last line holds faults_survived, runs_lost, half_checkpoints and
accounting_ok with those details.

    python -m bench.stress.chaos             # 4 actors, 600 updates, >= 20 faults (~8 min here)
    python -m bench.stress.chaos --quick     # 2 actors, one fault of each kind, by step (CI)
    python -m bench.stress.chaos --learner-workers 2  # with two data-parallel learner workers
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import REPO
from critic_unlearn.codec import CodecError, decode_state_dict
from critic_unlearn.config import load_config
from critic_unlearn.learner.checkpoint import load_checkpoint
from critic_unlearn.replay import RedisServer, ReplaySampler
from critic_unlearn.runtime import train_ray
from critic_unlearn.training.loop import CHECKPOINT, STATUS
from critic_unlearn.training.metrics import read_metrics
from critic_unlearn.training.snapshots import SNAPSHOTS, list_snapshots

RUN_NAME = "chaos"


@dataclass
class Faults:
    actor_kills: int = 0
    learner_kills: int = 0
    redis_restarts: int = 0
    learner_killed_at_step: int | None = None
    log: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.actor_kills + self.learner_kills + self.redis_restarts


def overrides(args: argparse.Namespace, run_dir: Path, redis_url: str) -> list[str]:
    """The toy world at small batches, so a run does many steps (and checkpoints) per minute."""
    return [
        "critic.init=null",
        "critic.warmup_steps=1",
        "sampler.batch_size=4",
        "learner.batch_size=8",
        "learner.minibatch_size=8",
        "learner.train_steps=2",
        f"learner.max_steps={args.steps}",
        "learner.checkpoint_every=2",
        f"learner.num_workers={args.learner_workers}",
        f"replay.url={redis_url}",
        "replay.capacity=128",
        "replay.min_size_to_sample=8",
        "replay.error_buffer=16",
        "replay.max_staleness=4",
        "replay.retry_deadline_s=60",
        f"actors.num={args.actors}",
        f"actors.cpus_per_actor={1.5 / args.actors:g}",
        "actors.max_restarts=1000",
        "actors.restart_backoff_s=0.5",
        "actors.restart_backoff_max_s=4",
        "runtime.kind=ray",
        "runtime.device=cpu",
        "runtime.num_threads=1",
        "runtime.ray_num_cpus=2",
        f"runtime.learner_cpus={0.5 / args.learner_workers:g}",  # half a CPU for all of them
        "runtime.progress_every_s=15",
        f"runtime.run_dir={run_dir}",
        f"runtime.run_name={RUN_NAME}",
    ]


def _status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / STATUS).read_text())
    except (OSError, ValueError):
        return {}


def _steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(read_metrics(path)) if path.exists() else 0


def _kill(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def inject(args, run_dir: Path, redis: RedisServer, faults: Faults, done: threading.Event):
    """The fault schedule; runs until the run is done."""
    rng = random.Random(args.seed)
    next_actor = time.monotonic() + args.actor_every
    learner_at, redis_at = args.steps // 3, 2 * args.steps // 3
    while not done.wait(0.2):
        steps, status = _steps(run_dir), _status(run_dir)
        kills_left = faults.actor_kills < args.max_actor_kills
        due = steps >= args.actor_at_step if args.actor_at_step else time.monotonic() >= next_actor
        if kills_left and due and status.get("actors"):
            ids = [i for i, a in status["actors"].items() if a.get("pid")]
            if ids:
                i = rng.choice(ids)
                if _kill(status["actors"][i]["pid"]):
                    faults.actor_kills += 1
                    faults.log.append(f"step {steps}: killed actor {i}")
            next_actor = time.monotonic() + args.actor_every
        if not faults.learner_kills and steps >= learner_at and steps % 2 == 1:
            pids = status.get("learner", {}).get("pids") or [None]
            if _kill(pids[-1]):
                faults.learner_kills += 1
                faults.learner_killed_at_step = steps
                rank = f" (rank {len(pids) - 1} of {len(pids)})" if len(pids) > 1 else ""
                faults.log.append(f"step {steps}: killed the learner{rank}")
        if not faults.redis_restarts and steps >= redis_at:
            redis.kill()
            time.sleep(0.5)
            redis.start()
            faults.redis_restarts += 1
            faults.log.append(f"step {steps}: crashed and restarted Redis")


def whole_files(run_dir: Path) -> tuple[int, int]:
    """(files checked, files that do not load whole): the checkpoint and every snapshot."""
    broken = 0
    snapshots = sorted((run_dir / SNAPSHOTS).glob("*.safetensors"))
    for path in [run_dir / CHECKPOINT, *snapshots]:
        try:
            if path.name.startswith("step_"):
                decode_state_dict(path.read_bytes())
            else:
                load_checkpoint(path)
        except (CodecError, OSError, ValueError, KeyError):
            broken += 1
    return 1 + len(snapshots), broken


def accounting(cfg, counted: int, kills: int) -> dict:
    unlimited = cfg.replay.model_copy(update={"error_buffer": 1e9, "min_size_to_sample": 1})
    with ReplaySampler(unlimited, namespace=RUN_NAME) as s:
        st = s.stats()
        present = int(st["replay/server_present"])
        inserted = int(st["replay/server_inserted"])
        evicted = int(st["replay/server_evictions"])
        corrupt = int(st["replay/server_corrupt"])
        seeds: dict[tuple[int, int], set[int]] = {}
        for x in s.sample(max(present, 1) * 20, min_version=0, timeout_s=5):
            seeds.setdefault((x.trajectory.actor_id, x.trajectory.seed), set()).add(x.meta.id)
    unreported = inserted - counted
    batch = cfg.sampler.batch_size
    ok = (
        inserted == present + evicted
        and corrupt == 0
        and all(len(ids) == 1 for ids in seeds.values())
        and 0 <= unreported <= kills * batch
    )
    return {
        "inserted": inserted,
        "present": present,
        "evicted": evicted,
        "corrupt": corrupt,
        "counted": counted,
        "unreported": unreported,
        "duplicated_seeds": sum(len(ids) > 1 for ids in seeds.values()),
        "accounting_ok": ok,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--actors", type=int, default=4)
    # 600: at ~1.4 steps/s here the run lasts ~7 min, room for >= 20 kills at one per 20 s
    p.add_argument("--steps", type=int, default=600, help="learner.max_steps of the run")
    p.add_argument("--actor-every", type=float, default=20.0, help="seconds between actor kills")
    p.add_argument("--max-actor-kills", type=int, default=10_000)
    p.add_argument("--actor-at-step", type=int, default=0, help="kill actors from this learner "
                   "step on instead of every --actor-every seconds (0: by time)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--learner-workers", type=int, default=1,
                   help="learner.num_workers (data-parallel learner workers)")
    p.add_argument("--out", type=Path, default=Path("runs/chaos"))
    p.add_argument("--quick", action="store_true", help="2 actors, 24 steps, one fault of each")
    args = p.parse_args(argv)
    if args.quick:
        args.actors, args.steps, args.actor_at_step, args.max_actor_kills = 2, 24, 4, 1
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.pop("RAY_ADDRESS", None)
    out = args.out.absolute()
    run_dir = out / RUN_NAME
    if run_dir.exists():
        sys.exit(f"{run_dir} exists: chaos needs a fresh run; remove it or pass another --out")
    faults, done = Faults(), threading.Event()
    with RedisServer(appendonly=True) as redis:
        cfg = load_config(
            REPO / "configs" / "toy_forget_red.yaml",
            overrides(args, out, redis.url),
        )
        thread = threading.Thread(target=inject, args=(args, run_dir, redis, faults, done))
        thread.start()
        t0 = time.perf_counter()
        error = ""
        try:
            result = train_ray(cfg)
            completed = result.updates == args.steps
            counted = result.trajectories
        except Exception as e:  # a lost run is this bench's finding, not its crash
            completed, counted, error = False, 0, f"{type(e).__name__}: {e}"
        finally:
            done.set()
            thread.join()
        wall = time.perf_counter() - t0
        books = accounting(cfg, counted, faults.actor_kills + faults.learner_kills)
    checked, broken = whole_files(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    logged_once = [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    redone = None
    if faults.learner_killed_at_step is not None:
        restored = max(
            (s.step for s in list_snapshots(run_dir) if s.step <= faults.learner_killed_at_step),
            default=0,
        )
        redone = faults.learner_killed_at_step - restored
    for line in faults.log:
        print(line)
    print(
        f"faults: {faults.actor_kills} actor kills, {faults.learner_kills} learner kill, "
        f"{faults.redis_restarts} Redis crash; run {'completed' if completed else 'LOST'} "
        f"in {wall:.0f} s{(' (' + error + ')') if error else ''}; {checked} checkpoint/snapshot "
        f"files, {broken} not whole; inserts {books['inserted']} = stored {books['present']} + "
        f"evicted {books['evicted']}; the run counted {books['counted']} "
        f"({books['unreported']} written by killed batches, never reported); learner steps done "
        f"again after its restart: {redone}; each step logged once: {logged_once}"
    )
    summary = {
        "faults_survived": faults.total if completed else 0,
        "runs_lost": 0 if completed else 1,
        "half_checkpoints": broken,
        **books,
        "accounting_ok": books["accounting_ok"] and logged_once,
        "actor_kills": faults.actor_kills,
        "learner_kills": faults.learner_kills,
        "redis_restarts": faults.redis_restarts,
        "learner_steps_redone": redone,
        "learner_workers": args.learner_workers,
        "wall_s": round(wall, 1),
        "run_dir": str(run_dir),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
