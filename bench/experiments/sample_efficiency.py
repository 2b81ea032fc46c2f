"""The paper's ablation grid on the toy world: what the per-step critic buys in sample efficiency.

Arms (config overrides on top of each scenario YAML, see bench/experiments/_ablation.py ARMS):
  critic       per-step critic on the noisy latent x_t with the timestep (the method)
  x0_pred      critic on the predicted clean latent instead of x_t
  no_timestep  critic without the timestep input
  ddpo         critic off: the terminal reward broadcast to every step (DDPO-style)
  critic_spi4  `critic` with off-policy reuse, replay.samples_per_insert=4 (opt-in via --arms)
Every scenario x arm x seed is its own run (local runtime, one process, no scheduling noise) in
OUT/<scenario>/<arm>/s<seed>/; seed s sets runtime.seed and learner.seed, so the arms of one seed
share sampling and evaluation seeds. After training, the judge scores every adapter snapshot
(evaluate_curve) and the run's result.json is written. Then, from whatever results exist:
OUT/table.md (also printed): trajectories to first judged UA >= --target (median [min, max] over
seeds, how many reached), final UA, final IRA and IRA as % of base, beside it the worst retain
prompt's drop below base in points (median [min, max] over seeds, the prompt and seed of the
largest) and the share of retain prompts more than 10 points below base, train time, critic
pretraining cost; OUT/ua_vs_trajectories.png; and, last on stdout, JSON with the medians (per arm
also max_worst_retain_drop_pts, worst_retain_prompt, median_worst_retain_drop_pts and
median_retain_share_below_10) and the DDPO / critic ratio per scenario. Each result.json has the
last snapshot's worst_retain_prompt, worst_retain_base, worst_retain_after,
worst_retain_drop_pts and retain_share_below_10 (evaluation/drift.py). Then the last snapshot
is judged again at --final-images per prompt (32; evaluation.curve.evaluate_final): at 4 images a
retain prompt moves in 25-point steps, too coarse for a 10-point neighbour target. result.json
keeps it as final_eval, the table shows it under each scenario. A finished run whose final
evaluation is missing (or smaller) gets one on the next invocation, while its snapshots exist.

Cost: one run is ~5-10 min of training at 100 learner steps on 2 CPU cores plus ~1-2 min of
judging, so the default grid (2 scenarios x 4 arms x 3 seeds = 24 runs) takes roughly 3-5 hours.
Resume: run the same command again. A run folder whose result.json has the same settings (steps,
every, images, overrides) is skipped and its result reused; a started run without result.json
continues from its checkpoint; a folder holding a run of other settings stops the bench before
anything trains (use another --out). --table-only rebuilds the outputs without training.

    python -m bench.experiments.sample_efficiency                  # the full grid -> runs/ablation
    python -m bench.experiments.sample_efficiency --quick        # 40 steps, 1 seed, toy_forget_red
    python -m bench.experiments.sample_efficiency --arms critic ddpo critic_spi4 --seeds 0 1
    python -m bench.experiments.sample_efficiency --table-only     # tables/plot from results so far
    python -m bench.experiments.sample_efficiency learner.lr=2e-3  # KEY=VALUE for every run
    python -m bench.experiments.sample_efficiency learner.lr=2e-3 --arms critic --seeds 3 4
      (KEY=VALUE before --arms / --seeds / --scenarios: those take lists and would swallow it)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402

from bench import REPO
from bench.experiments._ablation import (  # noqa: E402
    ARMS,
    CRITIC_INIT,
    DEFAULT_ARMS,
    METRICS,
    RESULT,
    SETTINGS,
    aligned_band,
    cell_settings,
    cell_state,
    critic_ev_by_timestep,
    final_result,
    load_results,
    make_result,
    markdown_table,
    point_at_target,
    run_overrides,
    settings_note,
    summarize,
    summary_json,
    wall_s_at_step,
)
from critic_unlearn.config import RunConfig, load_config  # noqa: E402
from critic_unlearn.evaluation.curve import evaluate_curve, evaluate_final  # noqa: E402
from critic_unlearn.io_utils import atomic_write_text  # noqa: E402
from critic_unlearn.runtime.local import train_local  # noqa: E402
from critic_unlearn.training.loop import CHECKPOINT  # noqa: E402
from critic_unlearn.training.plots import plot_curve  # noqa: E402
from critic_unlearn.training.snapshots import list_snapshots  # noqa: E402

SCENARIOS = [REPO / "configs" / f"{n}.yaml" for n in ("toy_forget_red", "toy_forget_red_circle")]
FULL = {"steps": 100, "every": 10, "images": 8, "final_images": 32, "out": Path("runs/ablation")}
QUICK = {"steps": 40, "every": 10, "images": 4, "final_images": 0,
         "out": Path("runs/ablation-quick")}
DEFAULT_SEEDS = (0, 1, 2)  # the full grid: 3 seeds per arm


@dataclass
class Cell:
    """One scenario x arm x seed: its config, folder and what to do with it."""

    scenario: str
    arm: str
    seed: int
    cfg: RunConfig
    run_dir: Path
    settings: dict[str, Any]
    state: str  # "done" | "resume" | "fresh" | "conflict" (bench.experiments._ablation.cell_state)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    p.add_argument("--scenarios", type=Path, nargs="+", default=None,
                   help="scenario YAMLs (default: toy_forget_red and toy_forget_red_circle; "
                        "--quick: toy_forget_red)")
    p.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARMS))
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="seeds (default 0 1 2; --quick: 0)")
    p.add_argument("--steps", type=int, default=None, help="learner steps per run (100; quick 40)")
    p.add_argument("--every", type=int, default=None, help="snapshot interval (10)")
    p.add_argument("--images", type=int, default=None,
                   help="judged images per prompt per snapshot (8; quick 4)")
    p.add_argument("--final-images", type=int, default=None,
                   help="judged images per prompt for the last snapshot's final evaluation "
                        "(32; quick 0 = none)")
    p.add_argument("--target", type=float, default=0.9, help="judged UA to reach")
    p.add_argument("--out", type=Path, default=None,
                   help="grid folder (runs/ablation; quick: runs/ablation-quick)")
    p.add_argument("--quick", action="store_true", help="a short smoke version of the grid")
    p.add_argument("--table-only", action="store_true",
                   help="train nothing: rebuild table, plot and JSON from existing result.json")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE overrides for every run")
    return resolve_defaults(p.parse_args(argv))


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """--quick changes the defaults only; explicit flags always win."""
    d = QUICK if args.quick else FULL
    for key in ("steps", "every", "images", "final_images", "out"):
        if getattr(args, key) is None:
            setattr(args, key, d[key])
    if args.seeds is None:
        args.seeds = [0] if args.quick else list(DEFAULT_SEEDS)
    if args.scenarios is None:
        args.scenarios = SCENARIOS[:1] if args.quick else list(SCENARIOS)
    return args


def plan(args: argparse.Namespace) -> list[Cell]:
    """Every cell's config, validated up front (a bad override fails before hours of training),
    seed-major so a partial grid already compares all arms on the first seeds."""
    cells = []
    for path in args.scenarios:
        for seed in args.seeds:
            for arm in args.arms:
                cells.append(make_cell(path, arm, seed, args))
    return cells


def make_cell(path: Path, arm: str, seed: int, args: argparse.Namespace) -> Cell:
    ovr = run_overrides(arm, seed, args.steps, args.every, args.overrides)
    name = load_config(path).scenario
    root = Path(args.out) / name / arm
    cfg = load_config(path, ["runtime.kind=local", f"runtime.run_dir={root}",
                             f"runtime.run_name=s{seed}", *ovr])
    settings = cell_settings(args.steps, args.every, args.images, ovr)
    run_dir = root / f"s{seed}"
    return Cell(cfg.scenario, arm, seed, cfg, run_dir, settings, cell_state(run_dir, settings))


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def run_cell(cell: Cell, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Train (or continue) one run, judge its snapshots, write its result.json."""
    resumed = (cell.run_dir / CHECKPOINT).exists()
    atomic_write_text(cell.run_dir / SETTINGS, json.dumps(cell.settings, indent=1))
    t0 = time.perf_counter()
    trained = train_local(cell.cfg, console)
    train_s = time.perf_counter() - t0
    curve = evaluate_curve(trained.run_dir, cell.cfg, images_per_prompt=args.images)
    plot_curve(trained.run_dir, curve)
    result = make_result(cell.arm, cell.scenario, cell.seed, cell.settings, train_s,
                         trained.trajectories, curve, args.target, resumed,
                         _read_json(cell.run_dir / CRITIC_INIT))
    if args.final_images:
        result["final_eval"] = final_result(
            evaluate_final(trained.run_dir, cell.cfg, images_per_prompt=args.final_images))
    result["wall_s_to_target"] = wall_s_at_step(
        cell.run_dir / METRICS, (point_at_target(curve, args.target) or {}).get("step"))
    result["judge_s"] = curve.get("wall_s")
    if ev := critic_ev_by_timestep(cell.run_dir / METRICS):
        result["critic_ev"] = ev
    atomic_write_text(cell.run_dir / RESULT, json.dumps(result, indent=1))
    return result


def needs_final(cell: Cell, images: int) -> bool:
    """A finished run without a final evaluation at `images` per prompt, whose adapter
    snapshots are still on disk to judge."""
    if cell.state != "done" or not images:
        return False
    final = (_read_json(cell.run_dir / RESULT) or {}).get("final_eval") or {}
    return final.get("images_per_prompt") != images and bool(list_snapshots(cell.run_dir))


def finalize_cell(cell: Cell, args: argparse.Namespace) -> dict[str, Any]:
    """Add the final evaluation to a finished run's result.json (nothing is retrained)."""
    result = json.loads((cell.run_dir / RESULT).read_text())
    if result.get("wall_s_to_target") is None:  # a result from before it was recorded
        result["wall_s_to_target"] = wall_s_at_step(
            cell.run_dir / METRICS,
            (point_at_target(result["curve"], result["target_ua"]) or {}).get("step"))
    result["final_eval"] = final_result(
        evaluate_final(cell.run_dir, cell.cfg, images_per_prompt=args.final_images))
    atomic_write_text(cell.run_dir / RESULT, json.dumps(result, indent=1))
    return result


def run_grid(cells: list[Cell], args: argparse.Namespace, console: Console) -> list[str]:
    """Run every cell not yet done (and judge the final snapshot of done ones that lack it); a
    failing cell is reported and skipped, so one bad run does not cost the rest of a multi-hour
    grid. Returns the failed cells' names."""
    failed = []
    todo = [c for c in cells if c.state != "done" or needs_final(c, args.final_images)]
    console.print(f"ablation: {len(cells)} runs, {len(cells) - len(todo)} already done")
    for i, cell in enumerate(todo, 1):
        tag = f"{cell.scenario}/{cell.arm}/s{cell.seed}"
        what = "final evaluation only" if cell.state == "done" else cell.state
        console.print(f"[bold]({i}/{len(todo)}) {tag}[/bold] ({what})")
        try:
            r = (finalize_cell(cell, args) if cell.state == "done"
                 else run_cell(cell, args, console))
        except Exception as e:  # noqa: BLE001 - report, keep the grid going
            console.print(f"[red]{tag} failed: {type(e).__name__}: {e}[/red]")
            failed.append(tag)
            continue
        console.print(f"{tag}: {r['trajectories']} trajectories, final UA {r['final_ua']}, "
                      f"IRA {r['final_ira']} (worst retain prompt {r['worst_retain_prompt']!r} "
                      f"{r['worst_retain_drop_pts']} points below base), to target "
                      f"{r['trajectories_to_target']}, {r['train_s']} s")
        if f := r.get("final_eval"):
            console.print(f"{tag}: final at {f['images_per_prompt']} images/prompt: UA {f['ua']}, "
                          f"IRA {f['ira']} (base {f['base_ira']}), worst retain prompt "
                          f"{f['worst_retain_prompt']!r} {f['worst_retain_drop_pts']} points")
    return failed


def plot_grid(results: list[dict[str, Any]], scenarios: list[str], arms: list[str],
              target: float, path: Path) -> Path | None:
    """UA vs trajectories, one subplot per scenario: median over seeds, min-max band per arm."""
    names = [s for s in scenarios if any(r["scenario"] == s for r in results)]
    names += sorted({r["scenario"] for r in results} - set(names))
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4), dpi=100, squeeze=False)
    for ax, sc in zip(axes[0], names, strict=True):
        for k, arm in enumerate(dict.fromkeys([*arms, *(r["arm"] for r in results)])):
            curves = [r["curve"] for r in results if r["scenario"] == sc and r["arm"] == arm]
            xs, med, lo, hi = aligned_band(curves)
            if not xs:
                continue
            ax.plot(xs, med, marker="o", ms=3, color=f"C{k}", label=f"{arm} (n={len(curves)})")
            ax.fill_between(xs, lo, hi, color=f"C{k}", alpha=0.15, lw=0)
        ax.axhline(target, ls="--", lw=1, color="grey", label=f"target {target}")
        ax.set(title=sc, xlabel="trajectories sampled", ylabel="judged UA", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def report(args: argparse.Namespace, scenarios: list[str], console: Console) -> None:
    """Table, plot and the JSON last line from every result.json under OUT."""
    out = Path(args.out)
    results = load_results(out)
    # the whole grid's arms and seeds, not only this invocation's: a table rebuilt after a run of
    # one arm or one seed still shows what is missing elsewhere
    arms = list(dict.fromkeys([*(args.arms if args.quick else DEFAULT_ARMS), *args.arms]))
    # ... and the seeds already in OUT, so a cell never shows more seeds than the grid has
    expected_seeds = len(set(args.seeds) | (set() if args.quick else set(DEFAULT_SEEDS))
                         | {r["seed"] for r in results})
    summary = summarize(results, args.target, scenarios, arms)
    table = markdown_table(summary, args.target, expected_seeds, settings_note(results))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "table.md", table + "\n")
    png = plot_grid(results, scenarios, arms, args.target, out / "ua_vs_trajectories.png")
    console.print(f"{len(results)} results; table {out / 'table.md'}; "
                  f"plot {png if png else '(none: no results yet)'}")
    print(table, flush=True)
    print(json.dumps(summary_json(summary, args.target, str(out))), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True)
    failed: list[str] = []
    if args.table_only:
        scenarios = [load_config(p).scenario for p in args.scenarios]
    else:
        cells = plan(args)
        scenarios = list(dict.fromkeys(c.scenario for c in cells))
        conflicts = [c.run_dir for c in cells if c.state == "conflict"]
        if conflicts:
            console.print("[red]these run folders hold runs of other settings (steps, every, "
                          "images or overrides); use another --out or remove them:[/red]")
            for d in conflicts:
                console.print(f"  {d}")
            return 2
        failed = run_grid(cells, args, console)
    report(args, scenarios, console)
    if failed:
        console.print(f"[red]{len(failed)} runs failed: {', '.join(failed)}[/red]")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
