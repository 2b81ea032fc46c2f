"""Evaluation outputs: eval.json, a Markdown table, and one before/after PNG grid per prompt."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from critic_unlearn.evaluation.attacks.report import summary_rows as attack_summary_rows
from critic_unlearn.evaluation.drift import THRESHOLD_PTS, share_key
from critic_unlearn.io_utils import atomic_write_text, image_grid


def _num(x: float | None, pct: bool = True) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:.2f}"


def markdown(result: dict[str, Any]) -> str:
    """The summary table (base beside unlearned) and the per-prompt table."""
    s = result
    concept = result["settings"]["concept"]
    lines = [
        f"# Evaluation: forget \"{concept}\"",
        "",
        f"{result['settings']['images_per_prompt']} images per prompt, held-out seeds from "
        f"{result['settings']['seeds_offset']}, templates: "
        + ", ".join(f"`{t}`" for t in result["settings"]["templates"]) + ".",
        "",
        "| metric | base | unlearned |",
        "|---|---|---|",
        *_judge_rows(s, concept),
        f"| CLIP score on retain prompts | {_num(s['base_clip_score'], False)} | "
        f"{_num(s['clip_score'], False)} |",
        *real_model_rows(s),
    ]
    for attr in sorted(s.get("forget_attribute_accuracy") or {}):
        lines.append(
            f"| forget images: {attr} judged as prompted | "
            f"{_num(s['base_forget_attribute_accuracy'][attr])} | "
            f"{_num(s['forget_attribute_accuracy'][attr])} |"
        )
    lines += [
        "",
        "Per prompt (forget: share judged as the concept, lower is better; retain: share judged "
        "right, higher is better). Grids: top row base, bottom row unlearned, same seeds.",
        "",
        "| role | prompt | base | unlearned | CLIP score base / unlearned | grid |",
        "|---|---|---|---|---|---|",
    ]
    for p in result["per_prompt"]:
        clip = f"{_num(p['base_clip_score'], False)} / {_num(p['clip_score'], False)}"
        lines.append(
            f"| {p['role']} | {p['prompt']} | {_num(p['base_rate'])} | {_num(p['rate'])} | "
            f"{clip} | [png]({p['grid']}) |"
        )
    if result.get("attack"):  # `attack.enabled`: the attacks' ASR, details in attack/attack.md
        lines += ["", "Attacks ([details](attack/attack.md)):", "",
                  *attack_summary_rows(result["attack"])]
    return "\n".join(lines) + "\n"


def _judge_rows(s: dict[str, Any], concept: str) -> list[str]:
    if s["settings"].get("ua_source") == "zero_shot":  # no judge: the zero-shot rows say it
        return []
    return [
        f"| UA: forget images not judged \"{concept}\" | {_num(s['base_ua'])} | {_num(s['ua'])} |",
        f"| IRA: retain images judged right (colour and shape) | {_num(s['base_ira'])} | "
        f"{_num(s['ira'])} |",
        *drift_rows(s),
    ]


def drift_rows(s: dict[str, Any]) -> list[str]:
    """Beside the mean IRA: the retain prompt that fell most below base, and how many retain
    prompts fell more than 10 points (none without a judge, or in an eval.json from before)."""
    if s.get("worst_retain_prompt") is None:
        return []
    share = s[share_key()]
    n = sum(p["role"] == "retain" for p in s.get("per_prompt", []))
    count = f" ({round(share * n)} of {n})" if n else ""
    p = s.get("worst_retain_p")
    paired = f", paired sign test p = {p:.3g}" if p is not None else ""
    rows = [
        f"| worst retain prompt, judged right: \"{s['worst_retain_prompt']}\" | "
        f"{_num(s['worst_retain_base'])} | {_num(s['worst_retain_after'])} "
        f"({-s['worst_retain_drop_pts']:+.1f} points{paired}) |",
        f"| retain prompts more than {THRESHOLD_PTS:g} points below base | - | "
        f"{_num(share)}{count} |",
    ]
    sig = s.get("retain_significantly_below")
    if sig is not None:
        names = ": " + ", ".join(f'"{t}"' for t in sig) if sig else ""
        rows.append(f"| retain prompts significantly below base (paired, Holm 5%) | - | "
                    f"{len(sig)}{names} |")
    return rows


def real_model_rows(s: dict[str, Any]) -> list[str]:
    """Zero-shot CLIP UA / IRA and FID / KID rows, when eval.json has them."""
    rows = []
    zs = s.get("zero_shot")
    if zs:
        how = f"zero-shot CLIP over {len(zs['classes'])} classes"
        rows += [
            f"| UA ({how}): forget images not classified \"{zs['classes'][0]}\" | "
            f"{_num(zs['base_ua'])} | {_num(zs['ua'])} |",
            f"| IRA ({how}): retain images classified as prompted | {_num(zs['base_ira'])} | "
            f"{_num(zs['ira'])} |",
        ]
    fd = s.get("fidelity")
    if fd:
        n = fd["images"]
        kid = "-" if fd["kid"] is None else f"{fd['kid']:.4f} ± {fd['kid_std']:.4f}"
        rows += [
            f"| FID to base images, retain prompts ({n} each; lower is closer) | 0 (reference) "
            f"| {_num(fd['fid'], False)} |",
            f"| KID to base images, retain prompts (mean ± std over subsets) | 0 (reference) "
            f"| {kid} |",
        ]
    return rows


def grid_name(prompt: str, prompt_id: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40]
    return f"grids/{slug}-{prompt_id.split('-')[-1]}.png"


def save_grid(path: Path, before: Tensor, after: Tensor) -> None:
    """Two rows: base images above, unlearned images below (k images each)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    k = before.shape[0]
    scale = max(1, 128 // before.shape[1])
    image_grid(torch.cat([before, after]), cols=k, scale=scale).save(path)


def write_report(out_dir: Path, result: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "eval.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out_dir / "eval.md", markdown(result))
