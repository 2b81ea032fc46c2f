"""Robustness grid: UA, IRA and attack success (synonym sweep, learned prompt) per arm and seed.

For each scenario x arm x seed: train (local runtime), judge the final adapter (`evaluate_run`:
UA, IRA on held-out seeds and templates), attack it and its base (`critic-unlearn attack`: ASR
of the synonym/paraphrase sweep and of the learned-prompt attack), and record the wall times.
Arms: "plain" (unlearning as configured), "adversarial" (attack.in_loop_every > 0: the
learned-prompt attack in the training loop, each call from the concept words with the full
budget) and "adversarial_warm" (each call a third of that budget, warm-started from the tokens
the previous call found); a cell of an adversarial arm fails, saying so, while the loop does not
report adversarial metrics. Their result.json also holds the in-loop attacks' cost and strength
(`loop_attack_s`, and `loop_concept_prob`: the attacker's CLIP p(concept) at each call's end).
Beside the mean IRA, every result.json has eval.json's retain drift (worst_retain_prompt,
worst_retain_base, worst_retain_after, worst_retain_drop_pts: percentage points below base, and
retain_share_below_10; evaluation/drift.py), the table its median [min, max] over seeds with the
prompt and seed of the largest drop, and the JSON per arm worst_retain_drop_pts and
retain_share_below_10 (medians), max_worst_retain_drop_pts and worst_retain_prompt.
Resumable per cell like bench/experiments/sample_efficiency.py (same folder layout and state
rules, bench/experiments/_ablation.py). Prints a Markdown table, then one JSON line with the
medians and each adversarial arm's wall-time ratio over plain.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import REPO
from bench.experiments._ablation import (
    RESULT,
    SETTINGS,
    cell_settings,
    cell_state,
    load_results,
    worst_over_seeds,
)
from critic_unlearn.config import load_config
from critic_unlearn.evaluation.attacks.cli import attack_run_dir
from critic_unlearn.evaluation.drift import empty_summary, share_key
from critic_unlearn.evaluation.run import evaluate_run
from critic_unlearn.io_utils import atomic_write_text
from critic_unlearn.runtime.local import train_local
from critic_unlearn.training.metrics import read_metrics

SCENARIOS = [REPO / "configs" / f"{n}.yaml" for n in ("toy_forget_red", "toy_forget_red_circle")]
ARMS: dict[str, list[str]] = {
    "plain": ["attack.in_loop_every=0"],
    "adversarial": ["attack.in_loop_every=10"],
    "adversarial_warm": ["attack.in_loop_every=10", "attack.in_loop_steps=10",
                         "attack.in_loop_warm_start=true"],
}
FULL = {"steps": 100, "images": 8, "attack_steps": 30, "out": Path("runs/robustness")}
QUICK = {"steps": 10, "images": 2, "attack_steps": 3, "out": Path("runs/robustness-quick")}
QUICK_ATTACK = ["attack.images_per_prompt=4", "attack.sweep_images=1", "attack.batch_size=4"]
ADVERSARIAL_METRIC = "adversarial/"  # prefix of the loop's metrics when the attack runs in it


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", type=Path, nargs="+", default=None)
    p.add_argument("--arms", nargs="+", default=None, choices=list(ARMS),
                   help="default plain adversarial; quick: plain")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2; quick 0")
    p.add_argument("--steps", type=int, default=None, help="learner steps (100; quick 10)")
    p.add_argument("--images", type=int, default=None, help="judged images per prompt (8)")
    p.add_argument("--attack-steps", type=int, default=None, help="attack budget (30; quick 3)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="one short plain run of toy_forget_red")
    p.add_argument("--table-only", action="store_true", help="tabulate existing result.json")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE overrides for every run")
    args = p.parse_args(argv)
    d = QUICK if args.quick else FULL
    for key in ("steps", "images", "attack_steps", "out"):
        if getattr(args, key) is None:
            setattr(args, key, d[key])
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.scenarios = args.scenarios or (SCENARIOS[:1] if args.quick else list(SCENARIOS))
    args.arms = args.arms or (["plain"] if args.quick else list(ARMS))
    if args.quick:
        args.overrides = [*QUICK_ATTACK, *args.overrides]
    return args


def cell_overrides(arm: str, seed: int, args: argparse.Namespace) -> list[str]:
    return [f"runtime.seed={seed}", f"learner.seed={seed}", f"learner.max_steps={args.steps}",
            f"learner.checkpoint_every={args.steps}", f"eval.images_per_prompt={args.images}",
            f"attack.steps={args.attack_steps}", "attack.enabled=false", *ARMS[arm],
            *args.overrides]


def run_cell(path: Path, arm: str, seed: int, args: argparse.Namespace,
             console: Console) -> dict[str, Any] | None:
    ovr = cell_overrides(arm, seed, args)
    name = load_config(path).scenario
    root = Path(args.out) / name / arm
    run_dir = root / f"s{seed}"
    settings = cell_settings(args.steps, 0, args.images, ovr)
    state = cell_state(run_dir, settings)
    if state == "done":
        return json.loads((run_dir / RESULT).read_text())
    if state == "conflict":
        console.print(f"[red]{run_dir}: a run of other settings is there; move it away[/red]")
        return None
    cfg = load_config(path, ["runtime.kind=local", f"runtime.run_dir={root}",
                             f"runtime.run_name=s{seed}", *ovr])
    atomic_write_text(run_dir / SETTINGS, json.dumps(settings, indent=1))
    t0 = time.perf_counter()
    trained = train_local(cfg, console)
    train_s = time.perf_counter() - t0
    metrics = (run_dir / "metrics.jsonl").read_text() if (run_dir / "metrics.jsonl").is_file() \
        else ""
    if arm.startswith("adversarial") and ADVERSARIAL_METRIC not in metrics:
        raise RuntimeError("the training loop logged no adversarial/ metrics: it does not run "
                           "attack.in_loop_every yet, so this arm would be plain unlearning")
    t1 = time.perf_counter()
    ev = evaluate_run(run_dir, cfg, grids=False)
    eval_s = time.perf_counter() - t1
    at = attack_run_dir(run_dir, cfg)
    result = {
        "arm": arm, "scenario": name, "seed": seed, "settings": settings,
        "train_s": round(train_s, 1), "eval_s": round(eval_s, 1), "attack_s": at["wall_s"],
        "trajectories": trained.trajectories,
        "ua": ev["ua"], "ira": ev["ira"], "base_ua": ev["base_ua"], "base_ira": ev["base_ira"],
        **{k: ev.get(k) for k in empty_summary()},  # the worst retain prompt, share > 10 below
        "synonym_asr": at["synonym"]["asr"], "synonym_base_asr": at["synonym"]["base_asr"],
        "learned_asr": at["learned"]["asr"], "learned_base_asr": at["learned"]["base_asr"],
        **loop_attack(run_dir / "metrics.jsonl"),
    }
    atomic_write_text(run_dir / RESULT, json.dumps(result, indent=1))
    return result


def loop_attack(metrics_path: Path) -> dict[str, Any]:
    """The in-loop attacks of a run: total seconds and p(concept) at the end of each call."""
    if not metrics_path.is_file():
        return {}
    rows = read_metrics(metrics_path)
    probs = [r["adversarial/concept_prob"] for r in rows if "adversarial/concept_prob" in r]
    if not probs:
        return {}
    total = max(r.get("adversarial/attack_s_total", 0.0) for r in rows)
    return {"loop_attack_s": round(total, 1), "loop_concept_prob": probs}


def _med(rows: list[dict[str, Any]], key: str) -> tuple[float, float, float] | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return (statistics.median(vals), min(vals), max(vals)) if vals else None


def _pct(m: tuple[float, float, float] | None) -> str:
    if m is None:
        return "-"
    return f"{100 * m[0]:.1f}% [{100 * m[1]:.0f}, {100 * m[2]:.0f}]"


SHARE = share_key()  # "retain_share_below_10"
KEYS = ("ua", "ira", "base_ira", "synonym_asr", "synonym_base_asr", "learned_asr",
        "learned_base_asr", "train_s", "attack_s", "loop_attack_s", "worst_retain_drop_pts",
        SHARE)


def summarize(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in results:
        out.setdefault(r["scenario"], {}).setdefault(r["arm"], {"rows": []})["rows"].append(r)
    for arms in out.values():
        for cell in arms.values():
            rows = cell.pop("rows")
            cell["seeds"] = sorted(r["seed"] for r in rows)
            cell.update({k: _med(rows, k) for k in KEYS})
            cell["worst_retain"] = worst_over_seeds(rows)  # prompt and seed of the largest drop
    return out


def _drop(c: dict[str, Any]) -> str:
    """The worst retain prompt's drop below base, points: median [min, max] over seeds, and the
    prompt and seed of the largest."""
    m, w = c.get("worst_retain_drop_pts"), c.get("worst_retain")
    if m is None or w is None:
        return "-"
    return f"{m[0]:.1f} [{m[1]:.1f}, {m[2]:.1f}]; max \"{w['prompt']}\" (s{w['seed']})"


def markdown_table(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = ["| scenario | arm | seeds | UA | IRA (base) | worst retain drop, pts | retain > 10 "
             "pts below | synonym ASR base -> unlearned | learned-prompt ASR base -> unlearned "
             "| train wall s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for scenario, arms in summary.items():
        for arm, c in arms.items():
            wall = "-" if c["train_s"] is None else f"{c['train_s'][0]:.0f}"
            lines.append(
                f"| {scenario} | {arm} | {len(c['seeds'])} | {_pct(c['ua'])} | "
                f"{_pct(c['ira'])} ({_pct(c['base_ira'])}) | {_drop(c)} | "
                f"{_pct(c.get(SHARE))} | {_pct(c['synonym_base_asr'])} -> "
                f"{_pct(c['synonym_asr'])} | {_pct(c['learned_base_asr'])} -> "
                f"{_pct(c['learned_asr'])} | {wall} |")
    return "\n".join(lines)


def _worst_json(c: dict[str, Any]) -> dict[str, Any]:
    """The largest worst-retain drop over seeds (points) and its prompt: the issue-23 target is
    no retain prompt more than 10 points below base on any seed."""
    w = c.get("worst_retain")
    return {"max_worst_retain_drop_pts": None if w is None else w["drop_pts"],
            "worst_retain_prompt": None if w is None else w["prompt"]}


def summary_json(summary: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scenario, arms in summary.items():
        row = {arm: {k: (None if v is None else round(v[0], 4)) for k, v in c.items()
                     if k in KEYS} | {"seeds": c["seeds"]} | _worst_json(c)
               for arm, c in arms.items()}
        plain = arms.get("plain", {}).get("train_s")
        for arm in (a for a in ARMS if a != "plain"):  # every arm gets its cost over plain
            adv = arms.get(arm, {}).get("train_s")
            row[f"wall_ratio_{arm}_over_plain"] = (round(adv[0] / plain[0], 3)
                                                   if plain and adv else None)
        out[scenario] = row
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True)
    failed = []
    if not args.table_only:
        for path in args.scenarios:
            for seed in args.seeds:
                for arm in args.arms:
                    tag = f"{path.stem}/{arm}/s{seed}"
                    console.print(f"[bold]robustness: {tag}[/bold]")
                    try:
                        r = run_cell(path, arm, seed, args, console)
                    except Exception as e:  # noqa: BLE001 - report, keep the grid going
                        console.print(f"[red]{tag} failed: {type(e).__name__}: {e}[/red]")
                        failed.append(tag)
                        continue
                    if r is None:
                        failed.append(tag)
    summary = summarize(load_results(Path(args.out)))
    table = markdown_table(summary)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.out) / "table.md", table + "\n")
    print(table)
    print(json.dumps({"robustness": summary_json(summary), "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
