"""The noise floor of the worst-retain-prompt measurement: how far the worst retain prompt "falls"
when nothing was unlearned at all.

The neighbour target (no retain prompt more than 10 points below its base) reads one judged
accuracy per retain prompt from N images. With 24 retain prompts and N = 16, the worst of 24
noisy differences is large even for an unchanged model. This bench measures that directly: the
base model's images for every retain prompt on --per-prompt fresh held-out seeds, judged once, cut
into disjoint groups of n, and every ordered pair of groups compared as if one were the base and
the other the model after unlearning (evaluation.drift.noise_floor). A worst drop inside this
spread cannot be told from a fresh draw of seeds. A real evaluation pairs the seeds of the base
and the unlearned model, so its noise is smaller: these independent draws are the upper end.

Per scenario and n: the base IRA on these images, the worst retain drop in points (median [min,
max] over pairs), how often it is above 10 points, and the median share of retain prompts more
than 10 points below. OUT/table.md (also printed), OUT/<scenario>.json; last stdout line JSON.
Cost: generation dominates, --per-prompt x retain prompts images per scenario (128 x 24 = 3,072
in the toy scenarios: a few minutes on 2 CPU cores).

    python -m bench.experiments.retain_noise                          # the three toy scenarios
    python -m bench.experiments.retain_noise --scenarios configs/toy_forget_red.yaml --images 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench import REPO
from critic_unlearn.config import load_config
from critic_unlearn.device import resolve_device
from critic_unlearn.evaluation.drift import THRESHOLD_PTS, noise_floor
from critic_unlearn.evaluation.generation import eval_items, generate
from critic_unlearn.evaluation.run import eval_prompts, load_eval_judge, load_eval_model, score
from critic_unlearn.io_utils import atomic_write_text

SCENARIOS = [REPO / "configs" / f"{n}.yaml"
             for n in ("toy_forget_red", "toy_forget_red_circle", "toy_flow_forget_red")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--scenarios", type=Path, nargs="+", default=SCENARIOS)
    p.add_argument("--images", type=int, nargs="+", default=[4, 16, 32],
                   help="judged images per prompt of the measurement whose floor is wanted")
    p.add_argument("--per-prompt", type=int, default=128,
                   help="fresh seeds per retain prompt (at least twice the largest --images)")
    p.add_argument("--out", type=Path, default=Path("runs/retain_noise"))
    p.add_argument("overrides", nargs="*", help="KEY=VALUE overrides for every scenario")
    args = p.parse_args(argv)
    if args.per_prompt < 2 * max(args.images):
        p.error(f"--per-prompt {args.per_prompt} is less than twice the largest --images "
                f"({max(args.images)}): raise --per-prompt or lower --images")
    return args


def base_hits(path: Path, per_prompt: int, overrides: list[str]) -> tuple[str, dict[str, list]]:
    """The scenario's base model judged on `per_prompt` held-out seeds per retain prompt:
    {retain prompt text: [judged right, ...]}."""
    cfg = load_config(path, overrides)
    device = resolve_device(cfg.runtime.device)
    judge, concept = load_eval_judge(cfg, device)
    if judge is None:
        raise ValueError(f"{path}: eval.judge is None; the noise floor needs a judge")
    comps = load_eval_model(cfg, device)
    prompts, _ = eval_prompts(cfg)
    retain = [p for p in prompts.all if p.role == "retain"]
    items = eval_items(retain, per_prompt, cfg.eval.seeds_offset)
    images = generate(comps, items, cfg)
    s = score(images, [it.prompt.text for it in items], [it.prompt.role for it in items], judge,
              concept, torch.zeros(len(items)))
    hit = s["hit"].view(len(retain), per_prompt)
    return cfg.scenario, {p.text: hit[i].tolist() for i, p in enumerate(retain)}


def floor_row(hits: dict[str, list], n: int) -> dict[str, Any]:
    """One scenario at n images per prompt: the worst-drop distribution over group pairs."""
    drifts = noise_floor(hits, n)
    worst = [d.drop_pts for d in drifts]
    return {
        "images_per_prompt": n,
        "pairs": len(drifts),
        "retain_prompts": len(hits),
        "base_ira": sum(map(sum, hits.values())) / sum(map(len, hits.values())),
        "worst_drop_median": statistics.median(worst),
        "worst_drop_min": min(worst),
        "worst_drop_max": max(worst),
        "p_worst_above_10": sum(w > THRESHOLD_PTS for w in worst) / len(worst),
        "share_below_10_median": statistics.median(d.share_below for d in drifts),
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["# The worst retain prompt's drop when nothing was unlearned", "",
             "The base model against itself on disjoint fresh seeds (every ordered pair of groups "
             "of n images per prompt). Worst drop: points, median [min, max] over pairs.", "",
             "| scenario | images/prompt | pairs | base IRA | worst retain drop, pts "
             "| P(worst > 10 pts) | retain > 10 pts below (median) |", "|" + "---|" * 7]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['images_per_prompt']} | {r['pairs']} | {r['base_ira']:.3f} "
            f"| {r['worst_drop_median']:.1f} [{r['worst_drop_min']:.1f}, "
            f"{r['worst_drop_max']:.1f}] | {r['p_worst_above_10']:.2f} "
            f"| {100 * r['share_below_10_median']:.1f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in args.scenarios:
        t0 = time.perf_counter()
        scenario, hits = base_hits(path, args.per_prompt, args.overrides)
        these = [{"scenario": scenario, **floor_row(hits, n)} for n in args.images]
        atomic_write_text(args.out / f"{scenario}.json", json.dumps(
            {"scenario": scenario, "per_prompt": args.per_prompt, "rows": these, "hits": hits,
             "wall_s": round(time.perf_counter() - t0, 1)}, indent=1))
        rows += these
        print(f"{scenario}: {round(time.perf_counter() - t0, 1)} s", file=sys.stderr, flush=True)
    md = table(rows)
    atomic_write_text(args.out / "table.md", md + "\n")
    print(md, flush=True)
    print(json.dumps({"rows": rows, "out": str(args.out)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
