"""`make demo`: unlearn "red" in the embedded toy world, evaluate with the judge, report.

Steps: load the packaged world (or build it when missing, ~40 minutes on 2 cores); train with the
best runtime available (`best_runtime`: Ray when it is installed, else the single-process runtime;
`runtime.kind=local` among the overrides chooses the latter anyway); plot the curves; evaluate base
vs unlearned on held-out seeds and templates; print the table. The last stdout line is one JSON
object:
{"ua", "ira", "base_ua", "base_ira", "unlearn_wall_s", "trajectories", "run_dir",
"worst_retain_prompt", "worst_retain_drop_pts", "retain_share_below_10"} (the last three: the
retain prompt that fell most below base, its drop in percentage points, and the share of retain
prompts more than 10 points below base; `evaluation.drift`).
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

from rich.console import Console

from critic_unlearn.config import load_config
from critic_unlearn.evaluation.drift import drift_of_rows, share_key

SHARE = share_key()  # "retain_share_below_10"
DEFAULT_SCENARIO = Path(__file__).resolve().parents[1] / "configs" / "toy_forget_red.yaml"
# `demo --backbone flow`: the same scenario on the flow toy world (an SD3-class MMDiT)
SCENARIOS = {"unet": DEFAULT_SCENARIO,
             "flow": DEFAULT_SCENARIO.with_name("toy_flow_forget_red.yaml")}


def ensure_world(console: Console) -> Path:
    """The toy world's folder; builds one under .cache/toyworld when none is installed."""
    import os

    from critic_unlearn.toyworld import ENV_VAR, WorldMissingError, world_dir

    try:
        return world_dir()
    except WorldMissingError:
        out = Path(".cache/toyworld")
        console.print(f"[yellow]no toy world installed: building one in {out} (~40 min)[/]")
        from critic_unlearn.toyworld.build import build_world
        from critic_unlearn.toyworld.build_config import BuildConfig

        build_world(out, BuildConfig.full())
        os.environ[ENV_VAR] = str(out.resolve())
        return world_dir()


def ensure_flow_world(console: Console) -> Path:
    """The flow world's folder; builds one under .cache/toyworld-flow when none is installed
    (beside the UNet world, whose VAE, text encoder and judge it shares)."""
    import os

    from critic_unlearn.toyworld import FLOW_ENV_VAR, WorldMissingError, flow_world_dir

    unet_world = ensure_world(console)
    out = Path(".cache/toyworld-flow")
    try:
        return flow_world_dir()
    except WorldMissingError:
        if (out / "model_card.json").is_file():  # built by an earlier demo
            os.environ[FLOW_ENV_VAR] = str(out.resolve())
            return flow_world_dir()
        console.print(f"[yellow]no flow toy world installed: building one in {out} (~30 min)[/]")
        from critic_unlearn.toyworld.flow import FlowConfig, build_flow_world

        build_flow_world(out, unet_world, FlowConfig())
        os.environ[FLOW_ENV_VAR] = str(out.resolve())
        return flow_world_dir()


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def best_runtime() -> str:
    """"ray" when the ray package is installed, else "local" (the run imports no Ray then)."""
    return "ray" if importlib.util.find_spec("ray") is not None else "local"


def worst_retain_drop(per_prompt: list[dict]) -> dict | None:
    """The retain prompt whose judged accuracy fell most below the base model's (the neighbour
    over-erasure users of erasure methods complain about), drop as a fraction; None without a
    judge. demo.json's "worst_retain_drop"; `evaluation.drift.retain_drift` decides."""
    drift = drift_of_rows(per_prompt)
    if drift is None:
        return None
    return {"prompt": drift.worst_prompt, "base": drift.base, "after": drift.after,
            "drop": round(drift.drop_pts / 100, 4)}


def demo_summary(ev: dict, unlearn_wall_s: float, trajectories: int, run_dir: str | Path) -> dict:
    """The demo's last stdout line from eval.json's content `ev`. Its first seven keys are read
    by others and keep their names; beside the mean IRA come the worst retain prompt,
    its drop in percentage points (base - after, positive = worse) and the share of retain
    prompts more than 10 points below base (None without a judge)."""
    return {
        "ua": ev["ua"],
        "ira": ev["ira"],
        "base_ua": ev["base_ua"],
        "base_ira": ev["base_ira"],
        "unlearn_wall_s": round(unlearn_wall_s, 1),
        "trajectories": trajectories,
        "run_dir": str(run_dir),
        "worst_retain_prompt": ev["worst_retain_prompt"],
        "worst_retain_drop_pts": ev["worst_retain_drop_pts"],
        SHARE: ev[SHARE],
        # whether the drops are more than a re-draw of images explains (paired sign test, Holm)
        "worst_retain_p": ev.get("worst_retain_p"),
        "retain_significantly_below": ev.get("retain_significantly_below"),
    }


def run_demo(
    scenario: Path = DEFAULT_SCENARIO,
    overrides: list[str] | None = None,
    console: Console | None = None,
) -> dict:
    console = console or Console(stderr=True)
    cfg = load_config(scenario, [f"runtime.kind={best_runtime()}", *(overrides or [])])
    flow = cfg.model.pretrained == "toyworld-flow"
    world = ensure_flow_world(console) if flow else ensure_world(console)
    console.print(
        f"[bold]demo:[/] forget {cfg.reward.prompts.concept!r} in the toy world "
        f"({world}), runtime {cfg.runtime.kind}, {cfg.learner.max_steps} learner steps"
    )
    from critic_unlearn.runtime import train
    from critic_unlearn.training.memory import PeakRss

    with PeakRss() as memory:
        t0 = time.perf_counter()
        result = train(cfg, console)
        wall = time.perf_counter() - t0
    from critic_unlearn.evaluation.curve import evaluate_curve
    from critic_unlearn.evaluation.run import evaluate_run
    from critic_unlearn.training.plots import plot_curve, plot_run

    plot_run(result.run_dir)
    console.print("[bold]evaluating[/] base and unlearned model with the independent judge ...")
    curve = evaluate_curve(result.run_dir, cfg)
    plot_curve(result.run_dir, curve)
    ev = evaluate_run(result.run_dir, cfg)
    console.print((Path(ev["out_dir"]) / "eval.md").read_text(), highlight=False, markup=False)
    worst = worst_retain_drop(ev["per_prompt"])
    if worst is not None:
        console.print(
            f"largest retain drop: {worst['prompt']!r} {worst['base']:.1%} -> {worst['after']:.1%}"
            f" ({-ev['worst_retain_drop_pts']:+.1f} points); retain prompts more than 10 points "
            f"below base: {ev[SHARE]:.1%}"
        )
    console.print(
        f"peak memory of the training run (driver, Ray, actors, learner, Redis; RSS summed): "
        f"{memory.peak_gb:.2f} GB"
    )
    summary = demo_summary(ev, wall, result.trajectories, result.run_dir)
    extra = {
        "peak_rss_gb": round(memory.peak_gb, 3),
        "forget_attribute_accuracy": ev["forget_attribute_accuracy"],
        "base_forget_attribute_accuracy": ev["base_forget_attribute_accuracy"],
        "ua_curve": [(p["trajectories"], p["ua"]) for p in curve["points"]],
        "worst_retain_drop": worst,
        # per snapshot: the worst retain prompt's drop below base in points (judged like ua_curve)
        "worst_retain_curve": [(p["trajectories"], p.get("worst_retain_drop_pts"))
                               for p in curve["points"]],
        "critic_init": _read_json(Path(result.run_dir) / "critic_init.json"),
    }
    (Path(result.run_dir) / "demo.json").write_text(json.dumps({**summary, **extra}, indent=2))
    return summary
