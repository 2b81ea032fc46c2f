"""Soak: tiny actors + learner under the Ray runtime for minutes; RSS and throughput over time.

    python -m bench.stress.soak                                   # 8 actors, 10 minutes
    python -m bench.stress.soak --actors 3 --duration-s 150 --warmup-s 60 --window-s 15

A real run, `critic-unlearn train` with runtime.kind=ray in a subprocess (tiny random SD model
and reward CLIP built into a temporary folder, replay.url=auto, a learner budget it never
reaches), is stopped with SIGTERM --duration-s after its first learner step, the way `ray job
stop` stops one: it checkpoints and exits. Times count from that first step (Ray's start,
imports and model loading are not soaked; before its loop runs, a SIGTERM would find Ray's
handler, not the run's). Meanwhile a thread here reads the RSS of every process of the run
every --sample-every-s: the driver and everything it started (learner, actors, Redis, raylet,
GCS and Ray's other helpers); actors are named by the pids the run writes to runtime.json, the
learner by its Ray process title. Throughput is trajectories/s per --window-s window from the
run's own metrics.jsonl.

A leak shows as RSS that keeps growing after warm-up: per process, growth = median of the last 3
samples over the median of the first 3 samples at or after --warmup-s, which must stay under 5%.
Throughput must be steady: every window after warm-up within 10% of the windows' median. The
last line is JSON: rss_growth_pct per process, throughput per window, throughput_cv, ok.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from bench import REPO
from bench.models import tiny_clip_dir
from bench.stress._cluster import private_ray_env
from critic_unlearn.diffusion.tiny import build_tiny_model
from critic_unlearn.training.metrics import read_metrics

RSS_LIMIT_PCT = 5.0  # growth after warm-up that counts as a leak
STEADY_PCT = 10.0  # a window this far from the median throughput is not steady


def soak_overrides(root: Path, actors: int) -> list[str]:
    """configs/tiny_run.yaml's run (the runtime tests' shape) that never reaches its budget."""
    return [
        f"model.pretrained={build_tiny_model(root / 'tiny-sd', seed=0)}",
        f"reward.clip_model={tiny_clip_dir(root)}",
        "learner.max_steps=1000000000",
        "learner.checkpoint_every=50",
        "replay.max_staleness=2",
        f"actors.num={actors}",
        "actors.cpus_per_actor=1",
        "runtime.kind=ray",
        f"runtime.ray_num_cpus={actors + 1}",  # logical CPUs: every actor and the learner start
        "runtime.learner_cpus=1",
        "runtime.progress_every_s=30",
        f"runtime.run_dir={root / 'runs'}",
        "runtime.run_name=soak",
    ]


def label(p: psutil.Process, actor_pids: dict[int, str]) -> str:
    """A stable name for one of the run's processes."""
    if p.pid in actor_pids:
        return actor_pids[p.pid]
    cmd = p.cmdline()
    head = cmd[0] if cmd else p.name()
    if "LearnerWorker" in head:
        return "learner"
    if "ActorWorker" in head:
        return f"actor-pid{p.pid}"  # not yet in runtime.json
    if head.startswith("ray::"):
        return head.split()[0]
    if "redis-server" in head or "valkey-server" in head:
        return "redis"
    scripts = [Path(a).name for a in cmd if a.endswith(".py")]
    return scripts[0] if scripts else Path(head).name


class RssSampler:
    """Every `every_s`: RSS of the driver and all its descendants, by name."""

    def __init__(self, driver: int, status: Path, every_s: float) -> None:
        self.driver, self.status, self.every_s = driver, status, every_s
        self.samples: list[tuple[float, dict[str, float]]] = []  # (s since start, name -> MB)
        self.t0 = time.monotonic()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _actor_pids(self) -> dict[int, str]:
        try:
            actors = json.loads(self.status.read_text())["actors"]
        except (OSError, ValueError, KeyError):
            return {}
        return {a["pid"]: f"actor{i}" for i, a in actors.items() if a.get("pid")}

    def sample(self) -> dict[str, float]:
        try:
            root = psutil.Process(self.driver)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return {}
        names = self._actor_pids()
        out: dict[str, float] = {}
        for p in procs:
            try:
                name = "driver" if p.pid == self.driver else label(p, names)
                rss = p.memory_info().rss / 1e6
            except psutil.Error:
                continue
            k, i = name, 1
            while k in out:  # several processes of one kind (e.g. idle Ray workers)
                i += 1
                k = f"{name}#{i}"
            out[k] = rss
        return out

    def _run(self) -> None:
        while not self.stop.is_set():
            snap = self.sample()
            if snap:
                self.samples.append((time.monotonic() - self.t0, snap))
            self.stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def rss_growth(samples: list[tuple[float, dict[str, float]]], warmup_s: float) -> dict:
    """Per process present from warm-up to the end: % growth, median of the last 3 samples over
    the median of the first 3 at or after warm-up."""
    after = [s for t, s in samples if t >= warmup_s]
    if len(after) < 4:
        return {}
    out = {}
    for name in after[0]:
        series = [s[name] for s in after if name in s]
        if len(series) < len(after) - 1:  # came and went: an idle worker, a restart
            continue
        base = statistics.median(series[:3])
        out[name] = round((statistics.median(series[-3:]) - base) / base * 100, 2)
    return out


def throughput_windows(rows: list[dict], warmup_s: float, window_s: float) -> list[float]:
    """Trajectories/s in consecutive windows after warm-up (the run's clock, metrics.jsonl)."""
    pts = [(r["time_s"], r["actor/trajectories"]) for r in rows if "actor/trajectories" in r]
    if len(pts) < 2:
        return []

    def at(t: float) -> float:  # cumulative trajectories at time t, linear between rows
        for (t0, y0), (t1, y1) in zip(pts, pts[1:], strict=False):
            if t0 <= t <= t1:
                return y0 + (y1 - y0) * (t - t0) / (t1 - t0) if t1 > t0 else y1
        return pts[-1][1] if t > pts[-1][0] else pts[0][1]

    out, t = [], warmup_s
    while t + window_s <= pts[-1][0]:
        out.append(round((at(t + window_s) - at(t)) / window_s, 3))
        t += window_s
    return out


def print_table(samples: list, rows: list[dict], every_s: float, actors: int) -> None:
    """RSS (MB) of the main processes, and the run's throughput, every `every_s` seconds."""
    main = ["driver", "learner", *[f"actor{i}" for i in range(actors)], "redis", "raylet",
            "gcs_server"]
    print(f"{'t_s':>6} {'traj/s':>7} {'total':>7} " + " ".join(f"{m[:9]:>9}" for m in main)
          + "  (RSS MB; total = every process of the run)")
    next_t = 0.0
    for t, snap in samples:
        if t < next_t:
            continue
        next_t = t + every_s
        done = [r for r in rows if r["time_s"] <= t]
        rate = done[-1].get("actor/trajectories_per_s") if done else None
        cells = [f"{snap[m]:9.0f}" if m in snap else f"{'-':>9}" for m in main]
        print(f"{t:6.0f} {rate if rate is not None else float('nan'):7.2f} "
              f"{sum(snap.values()):7.0f} " + " ".join(cells))


def wait_for_run(proc: subprocess.Popen, metrics: Path, timeout_s: float) -> float | None:
    """Monotonic time of the run's first logged learner step (its loop then runs and takes
    SIGTERM as a stop; polled every 0.5 s); None if the run died or did not get there in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and read_metrics(metrics):
            return time.monotonic()
        time.sleep(0.5)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--actors", type=int, default=8)
    ap.add_argument("--duration-s", type=float, default=600.0,
                    help="seconds of running run loop, then SIGTERM")
    ap.add_argument("--start-timeout-s", type=float, default=900.0,
                    help="seconds the run may take to reach its loop")
    ap.add_argument("--warmup-s", type=float, default=120.0, help="not judged")
    ap.add_argument("--sample-every-s", type=float, default=10.0, help="RSS sampling period")
    ap.add_argument("--window-s", type=float, default=60.0, help="throughput window")
    ap.add_argument("--print-every-s", type=float, default=None,
                    help="table row period (default: the throughput window)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cu-soak-") as tmp:
        root = Path(tmp)
        env = private_ray_env()
        env.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "critic_unlearn.cli", "train",
               str(REPO / "configs" / "tiny_run.yaml"), *soak_overrides(root, args.actors)]
        log_path = root / "train.log"
        run_dir = root / "runs" / "soak"
        t_launch = time.monotonic()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        with RssSampler(proc.pid, run_dir / "runtime.json", args.sample_every_s) as sampler:
            t_run = wait_for_run(proc, run_dir / "metrics.jsonl", args.start_timeout_s)
            try:
                left = t_run + args.duration_s - time.monotonic() if t_run is not None else 0
                proc.wait(timeout=max(0.0, left))
                stopped_by_us = False
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)  # in the loop: checkpoint, export, exit
                stopped_by_us = t_run is not None
                try:
                    proc.wait(timeout=180)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        wall = time.monotonic() - t_launch
        log_text = log_path.read_text(errors="replace")
        metrics = run_dir / "metrics.jsonl"
        rows = read_metrics(metrics) if metrics.exists() else []
        for r in rows[1:]:  # to the soak's clock: 0 at the first learner step
            r["time_s"] -= rows[0]["time_s"]
        if rows:
            rows[0]["time_s"] = 0.0
        if not stopped_by_us or not rows:
            print(log_text[-4000:])
            raise SystemExit(f"the run ended by itself (exit {proc.returncode}), did not reach "
                             "its loop in time, or logged no learner step; its log is above")
    shift = t_run - sampler.t0  # to the run's clock
    samples = [(t - shift, s) for t, s in sampler.samples if 0 <= t - shift <= args.duration_s]
    growth = rss_growth(samples, args.warmup_s)
    windows = throughput_windows(rows, args.warmup_s, args.window_s)
    print_table(samples, rows, args.print_every_s or args.window_s, args.actors)
    med = statistics.median(windows) if windows else float("nan")
    cv = statistics.pstdev(windows) / statistics.fmean(windows) if len(windows) > 1 else None
    steady = bool(windows) and all(abs(w - med) <= STEADY_PCT / 100 * med for w in windows)
    leak_free = bool(growth) and all(g < RSS_LIMIT_PCT for g in growth.values())
    worst = max(growth.items(), key=lambda kv: kv[1]) if growth else None
    last = rows[-1]
    print(
        f"{args.actors} actors, {wall:.0f} s wall ({args.duration_s:.0f} s until SIGTERM), "
        f"{last['step']} learner steps, {last['actor/trajectories']:.0f} trajectories; "
        f"throughput after {args.warmup_s:.0f} s in {len(windows)} windows of "
        f"{args.window_s:.0f} s: median {med:.2f} trajectories/s, "
        f"{[f'{w:.2f}' for w in windows]}, CV {cv if cv is None else round(cv, 3)} "
        f"({'steady' if steady else f'NOT steady: a window is more than {STEADY_PCT:.0f}% off'});"
        f" RSS growth after warm-up over {len(growth)} processes: worst "
        f"{worst[0] if worst else '-'} {worst[1] if worst else float('nan'):+.2f}% "
        f"({'flat' if leak_free else f'NOT flat: >= {RSS_LIMIT_PCT:.0f}%'})"
    )
    print(json.dumps({
        "ok": steady and leak_free,
        "rss_growth_pct": growth,
        "throughput_cv": None if cv is None else round(cv, 4),
        "throughput_median": round(med, 3),
        "throughput_windows": windows,
        "steady": steady,
        "leak_free": leak_free,
        "actors": args.actors,
        "duration_s": args.duration_s,
        "warmup_s": args.warmup_s,
        "learner_steps": last["step"],
        "trajectories": last["actor/trajectories"],
        "rss_end_mb": {k: round(v) for k, v in samples[-1][1].items()} if samples else {},
    }))


if __name__ == "__main__":
    main()
