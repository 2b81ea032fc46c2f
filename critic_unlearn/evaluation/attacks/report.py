"""The attack report as Markdown: ASR per attack, base beside unlearned, then the details."""

from __future__ import annotations

from typing import Any


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def summary_rows(result: dict[str, Any]) -> list[str]:
    """The two-row ASR table (also appended to eval.md when `eval` runs the attacks)."""
    s, lp = result["synonym"], result["learned"]
    k, steps = result["settings"]["num_tokens"], result["settings"]["steps"]
    return [
        "| attack | images | ASR base | ASR unlearned |",
        "|---|---|---|---|",
        f"| synonyms and paraphrases ({s['wordings']} wordings) | {s['images']} | "
        f"{_pct(s['base_asr'])} | {_pct(s['asr'])} |",
        f"| learned prompt ({k} soft tokens, {steps} steps) | {lp['images']} | "
        f"{_pct(lp['base_asr'])} | {_pct(lp['asr'])} |",
    ]


def markdown(result: dict[str, Any]) -> str:
    concept = result["settings"]["concept"]
    lines = [
        f"# Attacks: is \"{concept}\" still there?",
        "",
        "ASR: share of attacked images the judge sees as the concept (lower is better for the "
        "unlearned model). Held-out seeds from "
        f"{result['settings']['seeds_offset']}; the learned tokens are found against each model "
        "with the reward CLIP as the attacker's classifier.",
        "",
        *summary_rows(result),
        "",
        "Learned prompt, per attacked prompt (grids: top row base, bottom row unlearned):",
        "",
        "| prompt | ASR base | ASR unlearned | grid |",
        "|---|---|---|---|",
    ]
    for p in result["learned"]["per_prompt"]:
        lines.append(f"| {p['prompt']} | {_pct(p['base_asr'])} | {_pct(p['unlearned_asr'])} | "
                     f"[png]({p['grid']}) |")
    lines += ["", "Synonym sweep, per wording ([grid](grids/synonym.png): one image per wording):",
              "", "| wording | ASR base | ASR unlearned |", "|---|---|---|"]
    for w in result["synonym"]["per_wording"]:
        lines.append(f"| {w['prompt']} | {_pct(w['base_asr'])} | {_pct(w['unlearned_asr'])} |")
    return "\n".join(lines) + "\n"
