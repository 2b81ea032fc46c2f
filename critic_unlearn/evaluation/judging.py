"""UA and IRA from an independent judge: pure functions on judged labels, plus loading the judge.

UA (unlearning accuracy): share of forget-prompt images the judge does NOT see as the concept.
IRA (in-domain retain accuracy): share of retain-prompt images judged right on every attribute
the prompt names (colour and shape in the toy world). A judge output "none" (no shape drawn)
counts as "not the concept" for UA and as wrong for IRA.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from critic_unlearn.rewards.classifier import JSON_NAME, load_classifier
from critic_unlearn.rewards.preprocess import uint8_to_unit
from critic_unlearn.toyworld.data import parse_prompt

ATTRIBUTES = ("colour", "shape")  # what parse_prompt returns, in order: the judge's heads


@dataclass(frozen=True)
class Judge:
    """A multi-head classifier and the class names of each head."""

    model: nn.Module
    heads: dict[str, list[str]]  # head name -> class names (index = class id)

    @torch.no_grad()
    def labels(self, images: Tensor, batch_size: int = 256) -> dict[str, list[str]]:
        """(N, H, W, 3) uint8 -> predicted class name per head, N each."""
        preds: dict[str, list[str]] = {h: [] for h in self.heads}
        device = next(self.model.parameters()).device
        for chunk in images.split(batch_size):
            out = self.model(uint8_to_unit(chunk.to(device)))
            for h, names in self.heads.items():
                preds[h] += [names[i] for i in out[h].argmax(-1).tolist()]
        return preds


class EvaluationError(ValueError):
    """The evaluation cannot be set up as configured; the message says what to change."""


def load_judge(path: str | Path, device: str | torch.device = "cpu") -> Judge:
    """A classifier folder whose classifier.json lists its heads' class names."""
    p = Path(path)
    spec_path = p / JSON_NAME if p.is_dir() else p
    try:
        heads = json.loads(spec_path.read_text())["heads"]
    except (OSError, ValueError, KeyError):
        raise EvaluationError(
            f"eval.judge = {str(path)!r} has no {JSON_NAME} listing its heads' class names "
            '({"heads": {"colour": [...], "shape": [...]}}); use "toyworld" or a judge like it'
        ) from None
    missing = [a for a in ATTRIBUTES if a not in heads]
    if missing:
        raise EvaluationError(
            f"judge {str(path)!r} lacks heads {missing}; UA/IRA need {list(ATTRIBUTES)}"
        )
    return Judge(load_classifier(p, device), {h: list(heads[h]) for h in ATTRIBUTES})


def concept_attributes(concept: str) -> dict[str, str]:
    """'red circle' -> {'colour': 'red', 'shape': 'circle'}; 'red' -> {'colour': 'red'}."""
    parsed = dict(zip(ATTRIBUTES, parse_prompt(concept), strict=True))
    named = {k: v for k, v in parsed.items() if v is not None}
    if not named:
        raise EvaluationError(
            f"reward.prompts.concept = {concept!r} names no colour or shape the judge knows; the "
            "toy-world judge scores colours (red, green, blue, yellow) and shapes (circle, "
            "square, triangle, cross), synonyms included"
        )
    return named


def prompt_attributes(prompt: str) -> dict[str, str]:
    """The colour and shape a prompt asks for ({} if it names neither)."""
    parsed = dict(zip(ATTRIBUTES, parse_prompt(prompt), strict=True))
    return {k: v for k, v in parsed.items() if v is not None}


def shows(labels: dict[str, list[str]], target: dict[str, str]) -> Tensor:
    """(N,) bool: the judged labels match every attribute in `target`."""
    n = len(next(iter(labels.values())))
    ok = torch.ones(n, dtype=torch.bool)
    for attr, value in target.items():
        ok &= torch.tensor([lab == value for lab in labels[attr]], dtype=torch.bool)
    return ok


def attribute_accuracy(labels: dict[str, list[str]], target: dict[str, str]) -> dict[str, float]:
    """Per attribute, the share of images judged as the prompt asked (reward-hacking check)."""
    return {a: shows(labels, {a: v}).float().mean().item() for a, v in target.items()}
