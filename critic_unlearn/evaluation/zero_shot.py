"""UA / IRA without a judge: a zero-shot open_clip classifier over the concept and its neighbours.

A real model has no toy-world judge. As in the Imagenette erasure protocol, images are classified
among the concept and its neighbours (e.g. "church" among the ten Imagenette classes; "Van Gogh"
among other painters), here by CLIP zero-shot: each class is the mean of its unit text embeddings
over `eval.zero_shot.templates` (CLIP's prompt ensembling), and an image takes the nearest class.

UA: share of forget images not classified as the concept. IRA: share of retain images classified
as the class their prompt names, or, when it names none, as anything but the concept.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from critic_unlearn.config import RunConfig, ZeroShotConfig
from critic_unlearn.evaluation.judging import EvaluationError
from critic_unlearn.rewards.openclip_loading import LoadedClip, load_open_clip
from critic_unlearn.rewards.preprocess import clip_pixels, uint8_to_unit


def zero_shot_wanted(cfg: RunConfig) -> bool:
    """Whether `evaluate_run` classifies with CLIP: always, never, or (auto) without a judge."""
    use = cfg.eval.zero_shot.use
    return use == "always" or (use == "auto" and cfg.eval.judge is None)


def class_names(cfg: RunConfig) -> list[str]:
    """[concept, *neighbours], checked: at least two distinct classes, each with text."""
    zs = cfg.eval.zero_shot
    names = [zs.concept or cfg.reward.prompts.concept, *zs.neighbours]
    folded = [n.strip().lower() for n in names]
    if len(names) < 2 or "" in folded or len(set(folded)) != len(folded):
        raise EvaluationError(
            f"eval.zero_shot classes {names} (concept, then eval.zero_shot.neighbours) must be "
            "at least two distinct, non-empty names: a zero-shot classifier needs the concept's "
            "neighbours to choose from (e.g. the other Imagenette classes, other painters); set "
            "eval.zero_shot.neighbours, give a judge (eval.judge), or eval.zero_shot.use=never"
        )
    if any("{}" not in t for t in zs.templates) or not zs.templates:
        raise EvaluationError(
            f"eval.zero_shot.templates = {zs.templates}: each needs a '{{}}' for the class name"
        )
    return names


def prompt_class(prompt: str, classes: list[str]) -> int | None:
    """Index of the class the prompt names (whole words, any case; the longest name wins)."""
    text = prompt.lower()
    found = [i for i, c in enumerate(classes)
             if re.search(rf"(?<!\w){re.escape(c.lower())}(?!\w)", text)]
    return max(found, key=lambda i: len(classes[i])) if found else None


class ZeroShotClassifier:
    """`classifier(images) -> (N,) class indices` among `classes` (index 0 is the concept)."""

    def __init__(self, clip: LoadedClip, classes: list[str], templates: list[str],
                 batch_size: int = 64) -> None:
        self.clip, self.classes, self.batch_size = clip, list(classes), batch_size
        with torch.no_grad():
            texts = [t.replace("{}", c) for c in self.classes for t in templates]
            tokens = clip.tokenizer(texts).to(clip.device)
            emb = F.normalize(clip.model.encode_text(tokens).float(), dim=-1)
            emb = emb.view(len(self.classes), len(templates), -1).mean(1)
            self.text = F.normalize(emb, dim=-1)  # (C, D)

    @torch.no_grad()
    def similarities(self, images: Tensor) -> Tensor:
        """(N, H, W, 3) uint8 -> (N, C) cosine similarity of each image to each class, CPU."""
        out = [torch.zeros(0, len(self.classes))]
        for chunk in images.split(self.batch_size):
            x = clip_pixels(uint8_to_unit(chunk.to(self.clip.device)), self.clip.preprocess_cfg)
            img = F.normalize(self.clip.model.encode_image(x).float(), dim=-1)
            out.append((img @ self.text.T).cpu())
        return torch.cat(out)

    def __call__(self, images: Tensor) -> Tensor:
        """(N, H, W, 3) uint8 -> (N,) int64 class indices, on the CPU."""
        return self.similarities(images).argmax(-1)


def load_zero_shot(cfg: RunConfig, device: torch.device | str) -> ZeroShotClassifier | None:
    """The classifier `eval.zero_shot` asks for (None when not wanted); fails before sampling."""
    if not zero_shot_wanted(cfg):
        return None
    zs: ZeroShotConfig = cfg.eval.zero_shot
    classes = class_names(cfg)
    clip = load_open_clip(zs.clip_model, zs.clip_pretrained, device=device)
    return ZeroShotClassifier(clip, classes, list(zs.templates), zs.batch_size)


def zero_shot_rates(pred: Tensor, texts: list[str], roles: list[str],
                    classes: list[str]) -> dict[str, Any]:
    """UA and IRA (fractions, None without images of that role) from predicted classes."""
    forget = [i for i, r in enumerate(roles) if r == "forget"]
    retain = [i for i, r in enumerate(roles) if r != "forget"]
    unlearned = [int(pred[i]) != 0 for i in forget]
    right = []
    for i in retain:
        named = prompt_class(texts[i], classes)
        right.append(int(pred[i]) == named if named is not None else int(pred[i]) != 0)
    return {
        "ua": sum(unlearned) / len(unlearned) if unlearned else None,
        "ira": sum(right) / len(right) if right else None,
    }


def zero_shot_report(classifier: ZeroShotClassifier, base: Tensor, after: Tensor,
                     texts: list[str], roles: list[str]) -> dict[str, Any]:
    """eval.json's "zero_shot" entry: UA / IRA of both models, classes, and the CLIP used."""
    b = zero_shot_rates(classifier(base), texts, roles, classifier.classes)
    a = zero_shot_rates(classifier(after), texts, roles, classifier.classes)
    return {
        "ua": a["ua"], "ira": a["ira"], "base_ua": b["ua"], "base_ira": b["ira"],
        "classes": classifier.classes, "clip_model": classifier.clip.name,
    }
