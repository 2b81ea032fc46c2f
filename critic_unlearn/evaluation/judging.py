"""UA and IRA from an independent judge: pure functions on judged labels, plus loading the judge.

UA (unlearning accuracy): share of forget-prompt images the judge does NOT see as the concept.
IRA (in-domain retain accuracy): share of retain-prompt images judged right on every attribute
the prompt names (colour and shape in the toy world). A judge output "none" (no shape drawn)
counts as "not the concept" for UA and as wrong for IRA.

Which attributes a prompt asks for is read with the judge's own vocabulary: its classifier.json
lists, per head and class, the words that name the class ("words"; without it each class is named
by its class name). So any judge folder carries what its prompts mean, and this module knows
nothing of the toy world.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from critic_unlearn.rewards.classifier import JSON_NAME, load_classifier
from critic_unlearn.rewards.preprocess import uint8_to_unit
from critic_unlearn.vocabulary import Vocabulary

ATTRIBUTES = ("colour", "shape")  # the judge's heads that UA/IRA use
NO_SHAPE = "none"  # a judge class meaning "nothing drawn": no prompt asks for it


@dataclass(frozen=True)
class Judge:
    """A multi-head classifier and the class names of each head."""

    model: nn.Module
    heads: dict[str, list[str]]  # head name -> class names (index = class id)
    vocabulary: Vocabulary  # how prompts name the classes (classifier.json "words")

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


def _read_spec(path: str | Path) -> dict:
    p = Path(path)
    spec_path = p / JSON_NAME if p.is_dir() else p
    try:
        spec = json.loads(spec_path.read_text())
        heads = spec["heads"]
    except (OSError, ValueError, KeyError):
        raise EvaluationError(
            f"eval.judge = {str(path)!r} has no {JSON_NAME} listing its heads' class names "
            '({"heads": {"colour": [...], "shape": [...]}}); use a judge source name (e.g. the '
            "embedded world's) or a judge folder like it"
        ) from None
    missing = [a for a in ATTRIBUTES if a not in heads]
    if missing:
        raise EvaluationError(
            f"judge {str(path)!r} lacks heads {missing}; UA/IRA need {list(ATTRIBUTES)}"
        )
    return spec


def judge_vocabulary(path: str | Path) -> Vocabulary:
    """How the judge at `path` reads prompts: its classifier.json "words" (head -> class ->
    words), else each class named by its class name. No weights are read."""
    spec = _read_spec(path)
    words = spec.get("words")
    if words is None:
        return Vocabulary.from_classes({a: spec["heads"][a] for a in ATTRIBUTES}, skip=[NO_SHAPE])
    unknown = {a: sorted(set(words.get(a, {})) - set(spec["heads"][a])) for a in ATTRIBUTES}
    if any(unknown.values()) or any(a not in words for a in ATTRIBUTES):
        raise EvaluationError(
            f"judge {str(path)!r}: {JSON_NAME} 'words' must name classes of the heads "
            f"{list(ATTRIBUTES)} (unknown: {unknown})"
        )
    return Vocabulary({a: words[a] for a in ATTRIBUTES})


def load_judge(path: str | Path, device: str | torch.device = "cpu") -> Judge:
    """A classifier folder whose classifier.json lists its heads' class names (and words)."""
    spec, vocabulary = _read_spec(path), judge_vocabulary(path)
    heads = {h: list(spec["heads"][h]) for h in ATTRIBUTES}
    return Judge(load_classifier(Path(path), device), heads, vocabulary)


def _read(vocabulary: Vocabulary, text: str) -> dict[str, str]:
    try:
        named = vocabulary.read(text)
    except ValueError as e:
        raise EvaluationError(str(e)) from None
    return {a: v for a, v in named.items() if v is not None}


def concept_attributes(concept: str, vocabulary: Vocabulary) -> dict[str, str]:
    """'red circle' -> {'colour': 'red', 'shape': 'circle'}; 'red' -> {'colour': 'red'}."""
    named = _read(vocabulary, concept)
    if not named:
        raise EvaluationError(
            f"reward.prompts.concept = {concept!r} names no {' or '.join(vocabulary.attributes)} "
            f"the judge knows; it scores {vocabulary.describe()}"
        )
    return named


def prompt_attributes(prompt: str, vocabulary: Vocabulary) -> dict[str, str]:
    """The attributes (colour, shape) a prompt asks for ({} if it names none)."""
    return _read(vocabulary, prompt)


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
