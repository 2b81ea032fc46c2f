"""The paper's central ablation on the toy world: per-step critic vs critic off (DDPO-style).

Both arms run the same scenario with the same seeds (sampling, learner, held-out evaluation)
and differ only in `critic.enabled`; each trains with the local runtime (the Ray runtime runs the
same objects, and one process keeps the comparison free of scheduling noise), then the judge
scores every adapter snapshot. Prints one line per arm and, last, JSON with the trajectories
each arm needed to first reach UA >= --target and their ratio (DDPO / critic).

    python -m bench.sample_efficiency                         # toy_forget_red, 200 learner steps
    python -m bench.sample_efficiency --steps 60 --arms critic learner.lr=2e-3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console

from critic_unlearn.config import load_config
from critic_unlearn.evaluation.curve import evaluate_curve, trajectories_to
from critic_unlearn.training.local import train_local
from critic_unlearn.training.plots import plot_curve

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"critic": ["critic.enabled=true"], "ddpo": ["critic.enabled=false"]}


def run_arm(scenario: Path, arm: str, steps: int, every: int, out: Path, extra: list[str],
            images: int, console: Console) -> dict:
    overrides = [
        "runtime.kind=local",
        f"runtime.run_name={arm}",
        f"runtime.run_dir={out}",
        f"learner.max_steps={steps}",
        f"learner.checkpoint_every={every}",
        *ARMS[arm],
        *extra,
    ]
    cfg = load_config(scenario, overrides)
    t0 = time.perf_counter()
    result = train_local(cfg, console)
    train_s = time.perf_counter() - t0
    curve = evaluate_curve(result.run_dir, cfg, images_per_prompt=images)
    plot_curve(result.run_dir, curve)
    return {"arm": arm, "train_s": round(train_s, 1), "trajectories": result.trajectories,
            "curve": curve, "run_dir": str(result.run_dir)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", type=Path, default=ROOT / "configs" / "toy_forget_red.yaml")
    p.add_argument("--steps", type=int, default=200, help="learner steps per arm")
    p.add_argument("--every", type=int, default=10, help="snapshot (checkpoint) interval")
    p.add_argument("--images", type=int, default=8, help="judged images per prompt per snapshot")
    p.add_argument("--target", type=float, default=0.9, help="UA to reach")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--out", type=Path, default=Path("runs/sample_efficiency"))
    p.add_argument("overrides", nargs="*", help="KEY=VALUE overrides for both arms")
    args = p.parse_args()
    console = Console(stderr=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    reached = {}
    for arm in args.arms:
        r = run_arm(args.scenario, arm, args.steps, args.every, args.out / stamp,
                    args.overrides, args.images, console)
        c = r["curve"]
        reached[arm] = trajectories_to(c, args.target)
        best = max(c["points"], key=lambda q: q["ua"])
        print(json.dumps({
            "arm": arm, "train_s": r["train_s"], "trajectories": r["trajectories"],
            "base_ua": c["base"]["ua"], "base_ira": c["base"]["ira"],
            "final": c["points"][-1], "best_ua": best, "reached": reached[arm],
            "run_dir": r["run_dir"],
        }), flush=True)
    ratio = None
    if reached.get("critic") and reached.get("ddpo"):
        ratio = round(reached["ddpo"] / reached["critic"], 3)
    print(json.dumps({"target_ua": args.target, "trajectories_to_target": reached,
                      "ratio_ddpo_over_critic": ratio}))


if __name__ == "__main__":
    main()
