"""`evaluate_run`: judge an unlearned model against its base on held-out seeds and templates."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from critic_unlearn import sources
from critic_unlearn.adversarial.learn import require_soft_prompts
from critic_unlearn.config import RunConfig
from critic_unlearn.device import resolve_device
from critic_unlearn.diffusion.backbones import load_policy
from critic_unlearn.diffusion.contract import Policy
from critic_unlearn.diffusion.lora import attach_lora, set_adapter_state
from critic_unlearn.evaluation.attacks.run import attacker_clip, run_attacks
from critic_unlearn.evaluation.clip_score import clip_scores
from critic_unlearn.evaluation.drift import (
    drift_of_rows,
    empty_summary,
    paired_drop_p,
    significantly_below,
)
from critic_unlearn.evaluation.generation import (
    EvalItem,
    base_fingerprint,
    cached_base,
    eval_items,
    find_adapter,
    generate,
    save_base,
)
from critic_unlearn.evaluation.judging import (
    ATTRIBUTES,
    Judge,
    attribute_accuracy,
    concept_attributes,
    load_judge,
    prompt_attributes,
    shows,
)
from critic_unlearn.evaluation.real_metrics import load_real_metrics
from critic_unlearn.evaluation.report import grid_name, save_grid, write_report
from critic_unlearn.rewards.openclip_loading import load_open_clip
from critic_unlearn.rewards.prompts import Prompt, PromptSet, load_prompts

BASE_CACHE = "base_images.safetensors"


def eval_prompts(cfg: RunConfig) -> tuple[PromptSet, list[str]]:
    """The run's forget/retain prompts put in the eval templates (held out from training)."""
    p = cfg.reward.prompts
    templates = list(cfg.eval.templates) or list(p.templates)
    return load_prompts(p.model_copy(update={"templates": templates})), templates


def load_eval_judge(cfg: RunConfig, device: torch.device) -> tuple[Judge | None, dict[str, str]]:
    """The judge named by eval.judge (None: no UA/IRA) and the concept's attributes."""
    if cfg.eval.judge is None:
        return None, {}
    judge = load_judge(sources.resolve("judge", cfg.eval.judge), device)
    return judge, concept_attributes(cfg.reward.prompts.concept, judge.vocabulary)


def load_eval_model(cfg: RunConfig, device: torch.device) -> Policy:
    return load_policy(cfg.model, device=device)


def base_images(comps: Policy, items: list[EvalItem], cfg: RunConfig, cache: Path) -> Tensor:
    """The base model's images for `items`, from the cache file when it matches."""
    key = base_fingerprint(comps, items, cfg)
    base = cached_base(cache, key)
    if base is None:
        base = generate(comps, items, cfg)
        save_base(cache, key, base)
    return base


def _mean(x: Tensor) -> float | None:
    return x.float().mean().item() if x.numel() else None


def prompt_rates(hit: Tensor, prompts: list[Prompt], n: int) -> list[float | None]:
    """Per prompt, the share of its `n` images (items are prompt-major, `eval_items`) that
    `score` counted as a hit: for a retain prompt the share judged right."""
    return [_mean(hit[j * n:(j + 1) * n]) for j in range(len(prompts))]


def retain_prompt_rates(hit: Tensor, prompts: list[Prompt], n: int) -> dict[str, float]:
    """{retain prompt text: share of its images judged right} (what `retain_drift` compares)."""
    return {p.text: r for p, r in zip(prompts, prompt_rates(hit, prompts, n), strict=True)
            if p.role == "retain" and r is not None}


def score(
    images: Tensor,
    texts: list[str],
    roles: list[str],
    judge: Judge | None,
    concept: dict[str, str],
    clip_score: Tensor,
) -> dict[str, Any]:
    """UA, IRA, CLIP score, per-image 'hit' (forget: judged as concept; retain: judged right)."""
    forget = torch.tensor([r == "forget" for r in roles])
    hit = torch.zeros(len(texts), dtype=torch.bool)
    out: dict[str, Any] = {"ua": None, "ira": None, "forget_attribute_accuracy": None}
    if judge is not None:
        labels = judge.labels(images)
        hit[forget] = shows({k: [v[i] for i in forget.nonzero().flatten().tolist()]
                             for k, v in labels.items()}, concept)
        for i in (~forget).nonzero().flatten().tolist():
            one = {k: [v[i]] for k, v in labels.items()}
            hit[i] = bool(shows(one, prompt_attributes(texts[i], judge.vocabulary))[0])
        out["ua"] = 1.0 - _mean(hit[forget]) if forget.any() else None
        out["ira"] = _mean(hit[~forget])
        kept = [a for a in ATTRIBUTES if a not in concept]  # what forgetting must not change
        fidx = forget.nonzero().flatten().tolist()
        acc: dict[str, list[float]] = {a: [] for a in kept}
        for i in fidx:
            named = prompt_attributes(texts[i], judge.vocabulary)
            target = {a: v for a, v in named.items() if a in kept}
            for a, v in attribute_accuracy({k: [labels[k][i]] for k in labels}, target).items():
                acc[a].append(v)
        out["forget_attribute_accuracy"] = {a: sum(v) / len(v) for a, v in acc.items() if v}
    out["clip_score"] = _mean(clip_score[~forget])
    out["hit"] = hit
    return out


def retain_significance(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Beside the worst retain drop: its paired sign-test p (`worst_retain_p`) and the retain
    prompts significantly below base at family-wise 5% (`retain_significantly_below`, Holm):
    a drop a fresh draw of images could explain is not evidence of over-erasure. None without
    a judge."""
    p = {r["prompt"]: r["p_below_base"] for r in rows if r.get("p_below_base") is not None}
    drift = drift_of_rows(rows)
    if not p or drift is None:
        return {"worst_retain_p": None, "retain_significantly_below": None}
    return {"worst_retain_p": p[drift.worst_prompt],
            "retain_significantly_below": significantly_below(p)}


def retain_drift_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """eval.json's retain-drift keys from its per_prompt rows (all None without a judge)."""
    drift = drift_of_rows(rows)
    return empty_summary() if drift is None else drift.summary()


def evaluate_run(
    run_dir: str | Path,
    cfg: RunConfig,
    adapter_state: dict[str, Tensor] | None = None,
    *,
    out_dir: str | Path | None = None,
    grids: bool = True,
) -> dict[str, Any]:
    """Generate `eval.images_per_prompt` images per prompt with the base model and with the
    adapter (`adapter_state`, else the run's exported adapter or latest checkpoint), judge them,
    and write eval.json, eval.md and grids/ under `out_dir` (default RUN_DIR/eval).

    Returns the eval.json content: ua, ira, base_ua, base_ira, clip_score, base_clip_score (UA
    and IRA are fractions in [0, 1], None without a judge); beside the mean IRA, the retain drift
    (`evaluation.drift`): worst_retain_prompt, worst_retain_base, worst_retain_after,
    worst_retain_drop_pts (percentage points, positive = below base) and retain_share_below_10
    (None without a judge); per_prompt rows and settings.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "eval"
    device = resolve_device(cfg.runtime.device)
    state = adapter_state if adapter_state is not None else find_adapter(run_dir)
    prompts, templates = eval_prompts(cfg)
    judge, concept = load_eval_judge(cfg, device)
    real = load_real_metrics(cfg, device)  # zero-shot CLIP UA / IRA, FID / KID
    clip = load_open_clip(cfg.eval.clip_model or cfg.reward.clip_model,
                          cfg.eval.clip_pretrained if cfg.eval.clip_model
                          else cfg.reward.clip_pretrained, device=device)
    comps = load_eval_model(cfg, device)
    if cfg.attack.enabled and judge is not None:
        require_soft_prompts(comps, "attack.enabled")
    items = eval_items(list(prompts.all), cfg.eval.images_per_prompt, cfg.eval.seeds_offset)
    base = base_images(comps, items, cfg, out / BASE_CACHE)
    attach_lora(comps.denoiser, cfg.lora)
    set_adapter_state(comps.denoiser, {k: v.to(device) for k, v in state.items()})
    after = generate(comps, items, cfg)

    texts = [it.prompt.text for it in items]
    roles = [it.prompt.role for it in items]
    cs_base, cs_after = clip_scores(clip, base, texts), clip_scores(clip, after, texts)
    s_base = score(base, texts, roles, judge, concept or {}, cs_base)
    s_after = score(after, texts, roles, judge, concept or {}, cs_after)

    n = cfg.eval.images_per_prompt
    rates_base = prompt_rates(s_base["hit"], list(prompts.all), n)
    rates_after = prompt_rates(s_after["hit"], list(prompts.all), n)
    rows = []
    for j, prompt in enumerate(prompts.all):
        sl = slice(j * n, (j + 1) * n)
        grid = grid_name(prompt.text, prompt.id)
        if grids:
            k = min(cfg.eval.grid_images, n)
            save_grid(out / grid, base[sl][:k], after[sl][:k])
        rows.append({
            "prompt": prompt.text, "role": prompt.role, "id": prompt.id,
            "base_rate": rates_base[j] if judge else None,
            "rate": rates_after[j] if judge else None,
            "base_clip_score": _mean(cs_base[sl]), "clip_score": _mean(cs_after[sl]),
            "grid": grid if grids else None,
            # a retain prompt's drop against re-drawing noise (same seeds, paired sign test)
            "p_below_base": paired_drop_p(s_base["hit"][sl].tolist(), s_after["hit"][sl].tolist())
            if judge and prompt.role == "retain" else None,
        })
    result = {
        "ua": s_after["ua"], "ira": s_after["ira"],
        "base_ua": s_base["ua"], "base_ira": s_base["ira"],
        # beside the mean IRA: the worst retain prompt and the share > 10 points below base
        **retain_drift_summary(rows),
        **retain_significance(rows),
        "clip_score": s_after["clip_score"], "base_clip_score": s_base["clip_score"],
        "forget_attribute_accuracy": s_after["forget_attribute_accuracy"],
        "base_forget_attribute_accuracy": s_base["forget_attribute_accuracy"],
        "images": len(items) * 2,
        "wall_s": round(time.perf_counter() - t0, 2),
        "out_dir": str(out),
        "settings": {
            "concept": cfg.reward.prompts.concept,
            "judge": cfg.eval.judge, "clip_model": cfg.eval.clip_model or cfg.reward.clip_model,
            "images_per_prompt": n, "seeds_offset": cfg.eval.seeds_offset,
            "templates": templates, "model": comps.model_id,
            "sampler": cfg.sampler.model_dump(mode="json"),
        },
        "per_prompt": rows,
    }
    real.add_to(result, cfg, base, after, texts, roles)
    if cfg.attack.enabled and judge is not None:  # the adapter is still loaded in comps.denoiser
        result["attack"] = run_attacks(cfg, comps, attacker_clip(cfg, clip), judge, concept,
                                       out / "attack")
    write_report(out, result)
    return result
