"""Retain drift: how far the worst retain prompt fell below the base model, not only the mean.

A mean IRA close to the base model's can hide one neighbouring concept that fell a long way (the
over-erasure users of erasure methods complain about). `retain_drift` takes the judged accuracy
of every retain prompt, after unlearning and for the base model (the per-prompt shares
`evaluate_run` already writes to eval.json's per_prompt rows and `evaluate_curve` to each
snapshot), and returns the worst prompt and the share of prompts more than `threshold_pts`
percentage points below their base. A drop can be a fresh draw of images rather than a
concept lost: `paired_drop_p` tests each retain prompt's drop on the seeds it shares with the base
model, `significantly_below` keeps the family-wise level over all of them, and `noise_floor`
measures how far the worst prompt falls for a model that did not change. Pure arithmetic: no
torch, no judge.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

THRESHOLD_PTS = 10.0  # issue 23's target: no retain prompt more than 10 points below its base
_PTS_DIGITS = 6  # drops are rounded to this many decimals of a point before comparing, so that
# e.g. 0.8 - 0.7 (10.000000000000009 points in floats) is exactly 10, not "more than 10"


@dataclass(frozen=True)
class RetainDrift:
    """The worst retain prompt and the share of retain prompts below base by > threshold_pts.

    Accuracies are fractions in [0, 1]; drops are percentage points, base% - after%, positive =
    worse than base (negative: every prompt improved, the worst by -drop_pts points)."""

    worst_prompt: str
    base: float  # the worst prompt's base accuracy
    after: float  # ... and after unlearning
    drop_pts: float  # 100 * (base - after), rounded to 6 decimals
    below: int  # retain prompts with drop_pts > threshold_pts
    prompts: int  # retain prompts compared
    threshold_pts: float

    @property
    def share_below(self) -> float:
        return self.below / self.prompts

    def summary(self) -> dict[str, Any]:
        """The flat keys written beside the mean IRA (eval.json, the demo's JSON line, the
        benches' per-run rows)."""
        return {
            "worst_retain_prompt": self.worst_prompt,
            "worst_retain_base": self.base,
            "worst_retain_after": self.after,
            "worst_retain_drop_pts": self.drop_pts,
            share_key(self.threshold_pts): self.share_below,
        }


def share_key(threshold_pts: float = THRESHOLD_PTS) -> str:
    """'retain_share_below_10' for the default threshold."""
    return f"retain_share_below_{threshold_pts:g}"


def empty_summary(threshold_pts: float = THRESHOLD_PTS) -> dict[str, Any]:
    """`RetainDrift.summary()`'s keys, all None: no judge, or no retain prompts."""
    return dict.fromkeys(("worst_retain_prompt", "worst_retain_base", "worst_retain_after",
                          "worst_retain_drop_pts", share_key(threshold_pts)))


def _check(name: str, where: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) \
            or not 0.0 <= v <= 1.0:
        raise ValueError(f"{where} accuracy of retain prompt {name!r} is {v!r}; "
                         "expected a fraction in [0, 1]")
    return float(v)


def retain_drift(
    per_prompt_after: Mapping[str, float],
    per_prompt_base: Mapping[str, float],
    threshold_pts: float = THRESHOLD_PTS,
) -> RetainDrift:
    """Compare each retain prompt's judged accuracy after unlearning with the base model's.

    Both mappings go from retain prompt (its text) to the share of its images judged right, and
    must name the same prompts. The worst prompt is the one with the largest drop in points; on a
    tie, the first in `per_prompt_after`'s order. A prompt counts as below base when its drop is
    strictly more than `threshold_pts` (after rounding to 6 decimals of a point). Raises
    ValueError on no prompts, different prompt sets, or an accuracy outside [0, 1].
    """
    if not per_prompt_after:
        raise ValueError("retain_drift: no retain prompts to compare (the scenario has no "
                         "retain prompts, or nothing was judged)")
    if set(per_prompt_after) != set(per_prompt_base):
        only_after = sorted(set(per_prompt_after) - set(per_prompt_base))
        only_base = sorted(set(per_prompt_base) - set(per_prompt_after))
        raise ValueError(f"retain_drift: the two sides judge different prompts (only after "
                         f"unlearning: {only_after[:3]}, only base: {only_base[:3]})")
    if not math.isfinite(threshold_pts) or threshold_pts < 0:
        raise ValueError(f"retain_drift: threshold_pts = {threshold_pts!r}; expected >= 0 points")
    drops: dict[str, float] = {}
    for name, after in per_prompt_after.items():
        a = _check(name, "after-unlearning", after)
        b = _check(name, "base", per_prompt_base[name])
        drops[name] = round(100.0 * (b - a), _PTS_DIGITS) + 0.0  # + 0.0: no "-0.0"
    worst = max(drops, key=drops.__getitem__)  # max keeps the first of equal keys
    return RetainDrift(
        worst_prompt=worst,
        base=float(per_prompt_base[worst]),
        after=float(per_prompt_after[worst]),
        drop_pts=drops[worst],
        below=sum(d > threshold_pts for d in drops.values()),
        prompts=len(drops),
        threshold_pts=float(threshold_pts),
    )


def retain_rates(per_prompt: list[dict[str, Any]], key: str) -> dict[str, float]:
    """{prompt text: rows[key]} of eval.json's per_prompt rows whose role is retain and whose
    `key` ("rate" or "base_rate") was judged (not None)."""
    return {r["prompt"]: r[key] for r in per_prompt
            if r["role"] == "retain" and r.get(key) is not None}


def drift_of_rows(per_prompt: list[dict[str, Any]],
                  threshold_pts: float = THRESHOLD_PTS) -> RetainDrift | None:
    """`retain_drift` of eval.json's per_prompt rows; None when no retain prompt was judged."""
    after, base = retain_rates(per_prompt, "rate"), retain_rates(per_prompt, "base_rate")
    if not after:
        return None
    return retain_drift(after, base, threshold_pts)


def noise_floor(
    hits: Mapping[str, list[bool]],
    n: int,
    threshold_pts: float = THRESHOLD_PTS,
) -> list[RetainDrift]:
    """What `retain_drift` reports for a model that did not change at all: each retain prompt's
    judged hits on fresh seeds (`hits[prompt]`, the same model's images, at least 2n each) cut
    into disjoint groups of n, and every ordered pair of groups compared as if the first were
    the base model and the second the model after unlearning.

    The spread of these drifts is the noise floor of the worst-retain-prompt measurement at n
    images per prompt: a drop inside it cannot be told from a fresh draw of seeds. A model after
    unlearning shares its evaluation seeds with the base model, so its images are correlated
    with the base's and its noise is smaller than this; independent draws are the upper end."""
    if n < 1:
        raise ValueError(f"noise_floor: n = {n}; expected >= 1 image per prompt per group")
    if not hits:
        raise ValueError("noise_floor: no retain prompts' hits to compare")
    groups = min(len(h) for h in hits.values()) // n
    if groups < 2:
        short = min(hits, key=lambda k: len(hits[k]))
        raise ValueError(f"noise_floor: retain prompt {short!r} has {len(hits[short])} judged "
                         f"images; two groups of n = {n} need at least {2 * n}")
    rates = [{p: sum(h[g * n:(g + 1) * n]) / n for p, h in hits.items()} for g in range(groups)]
    return [retain_drift(rates[b], rates[a], threshold_pts)
            for a in range(groups) for b in range(groups) if a != b]


def paired_drop_p(base: Sequence[bool], after: Sequence[bool]) -> float:
    """One-sided exact sign test (McNemar's exact test) of a retain prompt's drop: its images
    judged right for the base model and after unlearning, on the same seeds. Only the seeds
    whose verdict changed count: `lost` right -> wrong, `gained` wrong -> right; under "no
    change" each changed seed is a fair coin, so p = P(Bin(lost + gained, 1/2) >= lost). Small
    p: the prompt fell by more than re-drawing images explains. 1.0 when nothing changed."""
    if len(base) != len(after):
        raise ValueError(f"paired_drop_p: {len(base)} base verdicts against {len(after)} after "
                         "unlearning; the two must judge the same seeds")
    lost = sum(bool(b) and not a for b, a in zip(base, after, strict=True))
    gained = sum(bool(a) and not b for b, a in zip(base, after, strict=True))
    m = lost + gained
    return sum(math.comb(m, k) for k in range(lost, m + 1)) / 2**m


def significantly_below(p_values: Mapping[str, float], alpha: float = 0.05) -> list[str]:
    """The retain prompts whose drop is significant at family-wise level `alpha` over all of
    them (Holm's step-down: the k-th smallest p must be <= alpha / (m - k + 1), stopping at the
    first that is not), smallest p first. With 24 prompts a single prompt needs p <= 0.0021."""
    order = sorted(p_values, key=p_values.__getitem__)
    out = []
    for k, name in enumerate(order):
        if p_values[name] > alpha / (len(order) - k):
            break
        out.append(name)
    return out
