"""UA and IRA along a run: the judge scores every adapter snapshot (`training/snapshots.py`).

This is the honest learning curve (the reward CLIP's UA proxy can be fooled; the judge is the
independent model) and what sample-efficiency comparisons read: trajectories sampled until UA
first reaches a target. Same held-out seeds and templates as `evaluate_run`, fewer images per
prompt by default, and the base model is generated once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from critic_unlearn.config import RunConfig
from critic_unlearn.device import resolve_device
from critic_unlearn.diffusion.lora import attach_lora, set_adapter_state
from critic_unlearn.evaluation.drift import empty_summary, retain_drift
from critic_unlearn.evaluation.generation import eval_items, generate
from critic_unlearn.evaluation.run import (
    BASE_CACHE,
    base_images,
    eval_prompts,
    load_eval_judge,
    load_eval_model,
    retain_prompt_rates,
    score,
)
from critic_unlearn.io_utils import atomic_write_text
from critic_unlearn.training.snapshots import list_snapshots

CURVE = "curve.json"
FINAL = "final_eval.json"  # evaluate_final: the last snapshot at more images per prompt


def _judged(images, items, prompts, n, judge, concept) -> dict[str, Any]:
    texts = [it.prompt.text for it in items]
    roles = [it.prompt.role for it in items]
    s = score(images, texts, roles, judge, concept, torch.zeros(len(items)))
    out = {k: s[k] for k in ("ua", "ira", "forget_attribute_accuracy")}
    out["retain_per_prompt"] = retain_prompt_rates(s["hit"], prompts, n)
    return out


def _drift(point: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The snapshot's worst retain prompt and share > 10 points below base (`retain_drift`)."""
    if not point["retain_per_prompt"]:
        return empty_summary()
    return retain_drift(point["retain_per_prompt"], base["retain_per_prompt"]).summary()


def evaluate_curve(
    run_dir: str | Path,
    cfg: RunConfig,
    images_per_prompt: int = 8,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Judge every snapshot of the run; writes and returns {base: {...}, points: [...]} where each
    point has step, trajectories, ua, ira, the forget prompts' kept-attribute accuracy, each
    retain prompt's judged accuracy (retain_per_prompt: {text: share judged right}, base too)
    and that snapshot's retain drift against the base (`evaluation.drift`: worst_retain_prompt,
    worst_retain_base, worst_retain_after, worst_retain_drop_pts, retain_share_below_10)."""
    return _judge_snapshots(run_dir, cfg, images_per_prompt, out_dir, last_only=False)


def evaluate_final(
    run_dir: str | Path,
    cfg: RunConfig,
    images_per_prompt: int = 32,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The last snapshot only, with more images per prompt than a curve can afford: a curve at 4
    images per prompt moves a retain prompt in steps of 25 points, too coarse for a 10-point
    neighbour target. Same layout as `evaluate_curve` (one point), written to final_eval.json
    with its own base-image cache."""
    return _judge_snapshots(run_dir, cfg, images_per_prompt, out_dir, last_only=True)


def _judge_snapshots(run_dir: str | Path, cfg: RunConfig, images_per_prompt: int,
                     out_dir: str | Path | None, last_only: bool) -> dict[str, Any]:
    if cfg.eval.judge is None:
        raise ValueError("eval.judge is None: a UA curve needs a judge (e.g. eval.judge=toyworld)")
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    snaps = list_snapshots(run_dir)
    if not snaps:
        raise FileNotFoundError(
            f"run folder {str(run_dir)!r} has no adapter snapshots (adapter/snapshots/); they are "
            "written at every checkpoint (learner.checkpoint_every) by this version's trainers"
        )
    if last_only:
        snaps = snaps[-1:]
    prefix = "final" if last_only else "curve"
    out = Path(out_dir) if out_dir is not None else run_dir / "eval"
    device = resolve_device(cfg.runtime.device)
    judge, concept = load_eval_judge(cfg, device)
    comps = load_eval_model(cfg, device)
    prompts, _ = eval_prompts(cfg)
    items = eval_items(list(prompts.all), images_per_prompt, cfg.eval.seeds_offset)
    base = base_images(comps, items, cfg, out / f"{prefix}_{BASE_CACHE}")
    judged_base = _judged(base, items, list(prompts.all), images_per_prompt, judge,
                          concept)
    attach_lora(comps.denoiser, cfg.lora)
    points = []
    for snap in snaps:
        set_adapter_state(comps.denoiser, {k: v.to(device) for k, v in snap.load().items()})
        judged = _judged(generate(comps, items, cfg), items, list(prompts.all), images_per_prompt,
                         judge, concept)
        points.append({"step": snap.step, "trajectories": snap.trajectories, **judged,
                       **_drift(judged, judged_base)})
    result = {
        "base": judged_base,
        "points": points,
        "images_per_prompt": images_per_prompt,
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    atomic_write_text(out / (FINAL if last_only else CURVE), json.dumps(result, indent=1))
    return result


def trajectories_to(curve: dict[str, Any], ua: float) -> int | None:
    """Trajectories sampled when UA first reached `ua` (None: never in this run)."""
    for p in curve["points"]:
        if p["ua"] is not None and p["ua"] >= ua:
            return p["trajectories"]
    return None
