"""Pure helpers of the ablation grid (bench/experiments/sample_efficiency.py): arms, run-folder
state, per-seed result records and their aggregation into a table and JSON.

Nothing here trains or judges, so the arithmetic the paper's numbers rest on (medians, ranges,
'not reached', the DDPO / critic ratio) is unit-tested on hand-made results
(tests/unit/test_bench_ablation.py).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from critic_unlearn.evaluation.curve import trajectories_to
from critic_unlearn.evaluation.drift import empty_summary, share_key
from critic_unlearn.training.metrics import read_metrics, timestep_metrics

# Each arm: config overrides applied on top of the scenario YAML (before the user's own).
ARMS: dict[str, list[str]] = {
    "critic": ["critic.enabled=true", "critic.input=noisy", "critic.timestep_input=true"],
    "x0_pred": ["critic.enabled=true", "critic.input=x0_pred"],
    "no_timestep": ["critic.enabled=true", "critic.timestep_input=false"],
    "ddpo": ["critic.enabled=false"],
    # the ceiling of per-step credit: V_i = the reward of the decoded predicted x0 (no training)
    "oracle": ["critic.enabled=true", "critic.kind=oracle"],
    # short-horizon advantages on Monte Carlo-trained values
    "critic_lam0_mc": ["critic.enabled=true", "learner.gae_lambda=0.0", "learner.value_target=mc"],
    "critic_lam05_mc": ["critic.enabled=true", "learner.gae_lambda=0.5",
                        "learner.value_target=mc"],
    # off-policy reuse: each trajectory is learned from ~4 times. One actor batch of 32 is then
    # 4 learner steps (4 versions), so records must stay drawable for 4 + 2 versions, or every
    # batch is born too stale and the run lives on the replay's deadlock breaker
    "critic_spi4": ["critic.enabled=true", "critic.input=noisy", "critic.timestep_input=true",
                    "replay.samples_per_insert=4", "replay.error_buffer=64",
                    "replay.max_staleness=6"],
    "ddpo_spi4": ["critic.enabled=false", "replay.samples_per_insert=4", "replay.error_buffer=64",
                  "replay.max_staleness=6"],
}
DEFAULT_ARMS = ["critic", "x0_pred", "no_timestep", "ddpo"]
RESULT = "result.json"
SETTINGS = "ablation_settings.json"  # written before training: what the folder is a run of
CRITIC_INIT = "critic_init.json"  # written by the trainer when a pretrained critic was used
METRICS = "metrics.jsonl"  # the trainer's per-step metrics, beside result.json
EV_KEY = "critic/ev_t"  # + 4-digit timestep: the critic's explained variance at that state
NOT_REACHED = math.inf  # a seed that never reaches the target sorts after every one that does


# ---------------------------------------------------------------- run folders


def run_overrides(arm: str, seed: int, steps: int, every: int, extra: list[str]) -> list[str]:
    """The overrides that define one cell's run besides its folder (recorded, compared on
    resume); the user's `extra` come last so they can refine an arm."""
    return [
        f"runtime.seed={seed}",
        f"learner.seed={seed}",
        f"learner.max_steps={steps}",
        f"learner.checkpoint_every={every}",
        *ARMS[arm],
        *extra,
    ]


def cell_settings(steps: int, every: int, images: int, overrides: list[str]) -> dict[str, Any]:
    """What must match for a finished run folder to be reused instead of rerun."""
    return {"steps": steps, "every": every, "images": images, "overrides": list(overrides)}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def cell_state(run_dir: Path, settings: dict[str, Any]) -> str:
    """Decide what to do with a run folder, from its files only:
    "done" (result.json with these settings: reuse it), "resume" (a started run of these
    settings: train_local continues from its checkpoint), "fresh" (nothing there yet), or
    "conflict" (a run of other settings: neither reuse nor continue it, the curve would mix)."""
    run_dir = Path(run_dir)
    result = _read_json(run_dir / RESULT)
    if result is not None:
        return "done" if result.get("settings") == settings else "conflict"
    started = _read_json(run_dir / SETTINGS)
    if started is not None:
        return "resume" if started == settings else "conflict"
    return "fresh"


# ---------------------------------------------------------------- one run's record


def make_result(arm: str, scenario: str, seed: int, settings: dict[str, Any], train_s: float,
                trajectories: int, curve: dict[str, Any], target: float, resumed: bool,
                critic_init: dict[str, Any] | None,
                final_eval: dict[str, Any] | None = None) -> dict[str, Any]:
    """result.json of one cell: everything the table needs, so the grid can be re-tabulated
    (--table-only) without the run folders' checkpoints or the judge."""
    final = curve["points"][-1]
    out = {
        "arm": arm,
        "scenario": scenario,
        "seed": seed,
        "settings": settings,
        "train_s": round(train_s, 1),
        "resumed": resumed,  # True: train_s covers only this session's part of the run
        "trajectories": trajectories,
        "target_ua": target,
        "trajectories_to_target": trajectories_to(curve, target),
        "final_ua": final["ua"],
        "final_ira": final["ira"],
        "base_ua": curve["base"]["ua"],
        "base_ira": curve["base"]["ira"],
        # beside the final IRA: the last snapshot's worst retain prompt (name, base and final
        # accuracy, drop in points) and share of retain prompts > 10 points below base; None for
        # a curve judged before per-prompt retain accuracy was recorded
        **{k: final.get(k) for k in empty_summary()},
        "curve": {"base": curve["base"], "points": curve["points"]},
    }
    if critic_init is not None:
        out["critic_init"] = critic_init
    if final_eval is not None:
        out["final_eval"] = final_result(final_eval)
    return out


def final_result(final_eval: dict[str, Any]) -> dict[str, Any]:
    """The last snapshot judged at more images per prompt (`evaluate_final`), as result.json
    keeps it: UA, IRA, their base and the retain drift, with the image count."""
    (p,) = final_eval["points"]
    return {"images_per_prompt": final_eval["images_per_prompt"], "step": p["step"],
            "trajectories": p["trajectories"], "ua": p["ua"], "ira": p["ira"],
            "base_ua": final_eval["base"]["ua"], "base_ira": final_eval["base"]["ira"],
            **{k: p.get(k) for k in empty_summary()}}


def point_at_target(curve: dict[str, Any], target: float) -> dict[str, Any] | None:
    """The first judged snapshot with UA >= target (the one trajectories_to counts to)."""
    return next((p for p in curve["points"] if p["ua"] is not None and p["ua"] >= target), None)


def wall_s_at_step(metrics_path: Path, step: int | None) -> float | None:
    """Training wall time (metrics.jsonl's time_s, from the run's start, critic pretraining not
    included) when the learner finished `step`; None without the file or the step."""
    if step is None or not Path(metrics_path).is_file():
        return None
    return next((float(r["time_s"]) for r in read_metrics(metrics_path)
                 if r.get("step") == step and "time_s" in r), None)


def critic_ev_by_timestep(metrics_path: Path) -> dict[str, float] | None:
    """What the critic knew during a run: for each stored timestep, the median over learner
    steps of the critic's explained variance of the realised reward (metrics.jsonl's
    critic/ev_tNNNN). Keys are timesteps as strings (JSON); None without a critic or a file."""
    if not Path(metrics_path).is_file():
        return None
    per_t: dict[int, list[float]] = {}
    for row in read_metrics(metrics_path):
        for t, v in timestep_metrics(row, EV_KEY).items():
            if math.isfinite(v):
                per_t.setdefault(t, []).append(float(v))
    if not per_t:
        return None
    return {str(t): round(statistics.median(v), 4) for t, v in sorted(per_t.items())}


def load_results(out: Path) -> list[dict[str, Any]]:
    """Every readable OUT/<scenario>/<arm>/s<seed>/result.json, in path order. A result
    written before results carried `critic_ev` gets it from its run folder's metrics, where
    that folder is still there."""
    results = []
    for p in sorted(Path(out).glob(f"*/*/s*/{RESULT}")):
        r = _read_json(p)
        if r is None:
            continue
        if "critic_ev" not in r and (ev := critic_ev_by_timestep(p.parent / METRICS)):
            r["critic_ev"] = ev
        results.append(r)
    return results


# ---------------------------------------------------------------- aggregation


def median_range(values: list[float]) -> tuple[float, float, float] | None:
    """(median, min, max); None for no values. math.inf (not reached) is an ordinary large
    value here, so a median over mostly-unreached seeds is itself 'not reached'."""
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarize_cell(results: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """One scenario x arm over its seeds. Trajectories-to-target are recomputed from the stored
    curves, so a table for another --target needs no rerun."""
    reach = [trajectories_to(r["curve"], target) for r in results]
    mr = median_range([NOT_REACHED if t is None else t for t in reach])
    ira_pct = [100.0 * r["final_ira"] / r["base_ira"]
               if r.get("final_ira") is not None and r.get("base_ira") else None for r in results]
    inits = [r["critic_init"] for r in results if r.get("critic_init")]
    at = [(point_at_target(r["curve"], target), r.get("base_ira")) for r in results]
    return {
        "seeds": len(results),
        "seed_ids": sorted(r["seed"] for r in results),
        "reached": sum(t is not None for t in reach),
        "to_target": mr,  # (median, min, max) with math.inf = not reached; None: no seeds
        "final_ua": _median([r.get("final_ua") for r in results]),
        "final_ira": _median([r.get("final_ira") for r in results]),
        "ira_pct_of_base": _median(ira_pct),
        # where each seed first reached the target: IRA there (% of base) and the wall time to it
        # (only runs judged at the target UA; a wall time only where the run recorded it)
        "ira_pct_at_target": _median([100.0 * p["ira"] / b if p and p["ira"] is not None and b
                                      else None for p, b in at]),
        "wall_s_to_target": _median([r.get("wall_s_to_target") for r in results
                                     if r.get("target_ua") == target]),
        **retain_drift_cell(results),
        "train_s": _median([r.get("train_s") for r in results]),
        "pretrain_trajectories": _median([i.get("trajectories") for i in inits]),
        "pretrain_s": _median([i.get("wall_s") for i in inits]),
        "pretrain_cached": any(i.get("cached") for i in inits),
        "pretrain_seeds": len(inits),
        "critic_ev": _median_ev([r["critic_ev"] for r in results if r.get("critic_ev")]),
        "ev_seeds": sum(bool(r.get("critic_ev")) for r in results),
        "final_eval": final_eval_cell(results),
    }


def final_eval_cell(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The seeds' final evaluations at the most judged images per prompt any of them has (a
    cell never mixes image counts): UA as (median, min, max), IRA as % of base (median, min,
    max), the retain drift as `retain_drift_cell` gives it. None when no seed has one."""
    finals = [(r["seed"], r["final_eval"]) for r in results if r.get("final_eval")]
    if not finals:
        return None
    n = max(f["images_per_prompt"] for _, f in finals)
    rows = [{**f, "seed": seed} for seed, f in finals if f["images_per_prompt"] == n]
    return {
        "images_per_prompt": n,
        "seeds": len(rows),
        "ua": median_range([r["ua"] for r in rows if r["ua"] is not None]),
        "ira_pct_of_base": median_range([100.0 * r["ira"] / r["base_ira"] for r in rows
                                         if r["ira"] is not None and r["base_ira"]]),
        "base_ira": _median([r["base_ira"] for r in rows]),
        **retain_drift_cell(rows),
    }


def worst_over_seeds(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The seed whose worst retain prompt fell furthest below base: {"prompt", "seed",
    "drop_pts"} (the first such seed on a tie); None when no result has a retain drift."""
    rows = [r for r in results if r.get("worst_retain_drop_pts") is not None]
    if not rows:
        return None
    w = max(rows, key=lambda r: r["worst_retain_drop_pts"])
    return {"prompt": w["worst_retain_prompt"], "seed": w["seed"],
            "drop_pts": w["worst_retain_drop_pts"]}


def retain_drift_cell(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One cell's retain drift over seeds: the worst retain drop in points as (median, min,
    max) over seeds, the seed and prompt of the largest, and the median share of retain prompts
    more than 10 points below base."""
    return {
        "worst_retain_drop": median_range([r["worst_retain_drop_pts"] for r in results
                                           if r.get("worst_retain_drop_pts") is not None]),
        "worst_retain": worst_over_seeds(results),
        "retain_share_below": _median([r.get(share_key()) for r in results]),
    }


def drift_text(c: dict[str, Any]) -> tuple[str, str]:
    """Markdown cells: 'median [min, max]' of the worst retain drop in points with the prompt
    and seed of the largest, and the median share of retain prompts > 10 points below base."""
    if c.get("worst_retain_drop") is None:
        return "—", "—"
    med, lo, hi = c["worst_retain_drop"]
    w = c["worst_retain"]
    drop = f"{med:.1f} [{lo:.1f}, {hi:.1f}]; max \"{w['prompt']}\" (s{w['seed']})"
    return drop, _num(None if c["retain_share_below"] is None
                      else 100 * c["retain_share_below"], ".1f") + "%"


def _median_ev(per_seed: list[dict[str, float]]) -> dict[str, float] | None:
    """Per timestep, the median over seeds of each seed's median explained variance."""
    ts = sorted({t for ev in per_seed for t in ev}, key=int)
    if not ts:
        return None
    return {t: round(statistics.median(ev[t] for ev in per_seed if t in ev), 4) for t in ts}


def median_to_target(cell: dict[str, Any]) -> int | None:
    """The cell's median trajectories to target as an int; None when missing or not reached."""
    mr = cell.get("to_target")
    if mr is None or math.isinf(mr[0]):
        return None
    return round(mr[0])


def ratio(numerator: int | None, denominator: int | None) -> float | None:
    """median(ddpo) / median(critic): how many times more trajectories DDPO needed; None unless
    both reached the target."""
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def summarize(results: list[dict[str, Any]], target: float, scenarios: list[str],
              arms: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """{scenario: {arm: cell}} for the requested scenarios and arms (empty cells kept, so the
    table shows what is missing) plus any other found in the results."""
    names = list(dict.fromkeys([*scenarios, *(r["scenario"] for r in results)]))
    arm_names = list(dict.fromkeys([*arms, *(r["arm"] for r in results)]))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for sc in names:
        out[sc] = {}
        for arm in arm_names:
            cell = [r for r in results if r["scenario"] == sc and r["arm"] == arm]
            if cell or arm in arms:
                out[sc][arm] = summarize_cell(cell, target)
    return out


def drift_json(c: dict[str, Any]) -> dict[str, Any]:
    """A cell's retain drift for the bench's JSON: the largest worst-retain drop over seeds (in
    points; the issue-23 target is <= 10 on every seed), its prompt, the median drop and the
    median share of retain prompts > 10 points below base (None: no seed has it)."""
    mr, w = c.get("worst_retain_drop"), c.get("worst_retain")
    return {"max_worst_retain_drop_pts": None if mr is None else mr[2],
            "worst_retain_prompt": None if w is None else w["prompt"],
            "median_worst_retain_drop_pts": None if mr is None else mr[0],
            f"median_{share_key()}": c.get("retain_share_below")}


def summary_json(summary: dict[str, dict[str, dict[str, Any]]], target: float,
                 out: str) -> dict[str, Any]:
    """The machine-readable last line of the bench."""
    scenarios = {}
    for sc, cells in summary.items():
        arms = {arm: {"median_trajectories_to_target": median_to_target(c),
                      "reached": c["reached"], "seeds": c["seeds"], **drift_json(c),
                      **({"final_eval": {"images_per_prompt": f["images_per_prompt"],
                                         "seeds": f["seeds"], **drift_json(f)}}
                         if (f := c.get("final_eval")) else {})}
                for arm, c in cells.items()}
        r = ratio(arms.get("ddpo", {}).get("median_trajectories_to_target"),
                  arms.get("critic", {}).get("median_trajectories_to_target"))
        scenarios[sc] = {"arms": arms, "median_ratio_ddpo_over_critic": r}
    return {"target_ua": target, "scenarios": scenarios, "out": out}


# ---------------------------------------------------------------- Markdown


def _traj(v: float) -> str:
    return "not reached" if math.isinf(v) else f"{round(v):,}"


def _num(v: float | None, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def _to_target_text(c: dict[str, Any]) -> str:
    if c["to_target"] is None:
        return "missing"
    med, lo, hi = c["to_target"]
    reached = f"({c['reached']}/{c['seeds']} reached)"
    if math.isinf(lo):
        return f"not reached {reached}"
    return f"{_traj(med)} [{_traj(lo)}, {_traj(hi)}] {reached}"


def _pretrain_text(c: dict[str, Any]) -> str:
    if not c["pretrain_seeds"]:
        return "—"
    cached = " (cached)" if c["pretrain_cached"] else ""
    return (f"{_num(c['pretrain_trajectories'], ',.0f')} traj, "
            f"{_num(c['pretrain_s'], '.0f')} s{cached}")


def table_row(arm: str, c: dict[str, Any], expected_seeds: int) -> str:
    """One Markdown row; a cell with fewer seeds than the grid asks for says so."""
    seeds = f"{c['seeds']}/{expected_seeds}" if expected_seeds else str(c["seeds"])
    ira = _num(c["final_ira"], ".3f")
    if c["ira_pct_of_base"] is not None:
        ira += f" ({c['ira_pct_of_base']:.1f}% of base)"
    drop, share = drift_text(c)
    at = _num(c["ira_pct_at_target"], ".1f") + ("%" if c["ira_pct_at_target"] is not None else "")
    return (f"| {arm} | {seeds} | {_to_target_text(c)} | {_num(c['wall_s_to_target'], '.0f')} "
            f"| {at} | {_num(c['final_ua'], '.3f')} | {ira} "
            f"| {drop} | {share} | {_num(c['train_s'], '.0f')} | {_pretrain_text(c)} |")


def markdown_table(summary: dict[str, dict[str, dict[str, Any]]], target: float,
                   expected_seeds: int, settings_note: str = "") -> str:
    """The report: one table per scenario, one row per arm, medians over seeds."""
    lines = [f"# Ablation: trajectories to judged UA >= {target}", ""]
    if settings_note:
        lines += [settings_note, ""]
    lines += [
        "Medians over seeds; [min, max] over seeds; a seed that never reached the target counts "
        "as 'not reached' (after every seed that did). Wall s to target: training time until "
        "the learner step of the first snapshot at the target (contended machines: compare "
        "within a table only; — where runs did not record it). IRA at target: at that "
        "snapshot. Final UA/IRA: last snapshot. Worst "
        "retain drop: at the last snapshot, the retain prompt furthest below its base accuracy, "
        "in points (positive = worse), and the prompt and seed of the largest; > 10 pts: the "
        "share of retain prompts more than 10 points below base. Pretraining: the critic's "
        "pretraining cost, not included in the trajectories.",
        "",
    ]
    head = ("| arm | seeds | trajectories to target | wall s to target | IRA at target, % of base "
            "| final UA | final IRA | worst retain drop, pts | retain > 10 pts below | train s "
            "| critic pretraining |")
    for sc, cells in summary.items():
        lines += [f"## {sc}", "", head, "|" + "---|" * 11]
        lines += [table_row(arm, c, expected_seeds) for arm, c in cells.items()]
        r = ratio(median_to_target(cells.get("ddpo", {})),
                  median_to_target(cells.get("critic", {})))
        lines += ["", f"DDPO / critic (median trajectories to target): "
                      f"{'—' if r is None else f'{r:.2f}x'}", ""]
        lines += final_table(cells)
        lines += ev_table(cells)
    return "\n".join(lines)


def _range_text(mr: tuple[float, float, float] | None, fmt: str, unit: str = "") -> str:
    if mr is None:
        return "—"
    med, lo, hi = mr
    return f"{med:{fmt}}{unit} [{lo:{fmt}}, {hi:{fmt}}]"


def final_table(cells: dict[str, dict[str, Any]]) -> list[str]:
    """Per arm with final evaluations: the last snapshot judged at more images per prompt
    (median [min, max] over seeds). Empty when no result carries one."""
    finals = {arm: c["final_eval"] for arm, c in cells.items() if c.get("final_eval")}
    if not finals:
        return []
    lines = ["Final evaluation: the last snapshot judged again at more images per prompt "
             "(one retain prompt moves in steps of 100/N points); median [min, max] over seeds:",
             "", "| arm | images/prompt | seeds | final UA | final IRA, % of base "
             "| worst retain drop, pts | retain > 10 pts below |", "|" + "---|" * 7]
    for arm, f in finals.items():
        drop, share = drift_text(f)
        lines.append(f"| {arm} | {f['images_per_prompt']} | {f['seeds']} "
                     f"| {_range_text(f['ua'], '.3f')} "
                     f"| {_range_text(f['ira_pct_of_base'], '.1f', '%')} | {drop} | {share} |")
    return [*lines, ""]


def ev_table(cells: dict[str, dict[str, Any]]) -> list[str]:
    """Per arm with a critic: its explained variance of the realised reward at each stored
    timestep, noisiest first (median over a run's learner steps, then over seeds). Empty when
    no result carries it."""
    evs = {arm: c for arm, c in cells.items() if c.get("critic_ev")}
    if not evs:
        return []
    ts = sorted({t for c in evs.values() for t in c["critic_ev"]}, key=int, reverse=True)
    lines = ["Critic's explained variance of the realised reward per timestep t (median over "
             "each run's learner steps, then over seeds; 1 = predicts the reward, 0 = no "
             "better than its mean):", "",
             "| arm | seeds | " + " | ".join(f"t={t}" for t in ts) + " |",
             "|" + "---|" * (len(ts) + 2)]
    for arm, c in evs.items():
        vals = [_num(c["critic_ev"].get(t), ".2f") for t in ts]
        lines.append(f"| {arm} | {c['ev_seeds']} | " + " | ".join(vals) + " |")
    return [*lines, ""]


def settings_note(results: list[dict[str, Any]]) -> str:
    """Which learner steps / snapshot interval / judged images the results were made with;
    flags a mix (results of different settings are not comparable)."""
    seen = sorted({(r["settings"]["steps"], r["settings"]["every"], r["settings"]["images"])
                   for r in results if "settings" in r})
    if not seen:
        return ""
    text = "; ".join(f"steps={s}, every={e}, images/prompt={i}" for s, e, i in seen)
    return ("Settings: " if len(seen) == 1 else "WARNING, mixed settings: ") + text


# ---------------------------------------------------------------- curves for the plot


def aligned_band(curves: list[dict[str, Any]], key: str = "ua"
                 ) -> tuple[list[float], list[float], list[float], list[float]]:
    """Seeds aligned on snapshot index (index 0: the base model at 0 trajectories), cut to the
    shortest: x = median trajectories, then median, min and max of `key` over seeds."""
    series = [[(0, c["base"][key])] + [(p["trajectories"], p[key]) for p in c["points"]]
              for c in curves]
    n = min((len(s) for s in series), default=0)
    xs, med, lo, hi = [], [], [], []
    for i in range(n):
        ys = [s[i][1] for s in series if s[i][1] is not None]
        if not ys:
            continue
        xs.append(statistics.median(s[i][0] for s in series))
        med.append(statistics.median(ys))
        lo.append(min(ys))
        hi.append(max(ys))
    return xs, med, lo, hi
