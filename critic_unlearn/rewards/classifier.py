"""A classifier's probability of one class as the reward (the toy world's judge, UnlearnCanvas...).

The classifier comes from a path and is loaded without unpickling anything:
- a TorchScript file (`torch.jit.script(model).save(path)`), read with `torch.jit.load`; or
- a JSON file (or a folder holding `classifier.json`) naming a module class and its safetensors
  weights: {"class": "package.module:ClassName", "kwargs": {...}, "weights": "model.safetensors"}.
It receives (B, 3, H, W) float32 images in [0, 1] and returns logits or probabilities (B, C),
or a tuple / dict of such heads (pick one with `head`).
"""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from critic_unlearn.rewards.clip_concept import check_inputs
from critic_unlearn.rewards.preprocess import uint8_to_unit

JSON_NAME = "classifier.json"


class ClassifierLoadError(RuntimeError):
    """The classifier file could not be read; the message names the file and what to do."""


def _load_from_json(path: Path) -> nn.Module:
    try:
        spec = json.loads(path.read_text())
        module_name, _, class_name = spec["class"].partition(":")
        kwargs = spec.get("kwargs", {})
        weights = path.parent / spec.get("weights", "model.safetensors")
    except (ValueError, KeyError, AttributeError) as e:
        raise ClassifierLoadError(
            f"classifier config {str(path)!r} is not valid ({type(e).__name__}: {e}); it must be "
            'JSON like {"class": "package.module:ClassName", "kwargs": {}, '
            '"weights": "model.safetensors"}'
        ) from None
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as e:
        raise ClassifierLoadError(
            f"classifier config {str(path)!r}: cannot import class {spec['class']!r} ({e}); "
            "make sure its package is installed and the name is 'package.module:ClassName'"
        ) from None
    if not weights.is_file():
        raise ClassifierLoadError(
            f"classifier weights {str(weights)!r} (named in {str(path)!r}) do not exist"
        )
    model = cls(**kwargs)
    missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
    if missing or unexpected:
        raise ClassifierLoadError(
            f"classifier weights {str(weights)!r} do not fit {spec['class']}: missing "
            f"{list(missing)[:5]}, unexpected {list(unexpected)[:5]}; check kwargs in {str(path)!r}"
        )
    return model


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load a TorchScript file, or a JSON config + safetensors weights, in eval mode."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / JSON_NAME
    if not p.is_file():
        raise ClassifierLoadError(
            f"reward.classifier.path {str(path)!r} does not exist; give a TorchScript file or a "
            f"{JSON_NAME} (or its folder) naming a module class and safetensors weights"
        )
    if p.suffix == ".json":
        model = _load_from_json(p)
    else:
        try:
            with warnings.catch_warnings():  # torch 2.14 deprecates TorchScript; it still loads
                warnings.simplefilter("ignore", FutureWarning)
                model = torch.jit.load(str(p), map_location="cpu")
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ClassifierLoadError(
                f"reward.classifier.path {str(p)!r} is not a TorchScript file ({first}); save the "
                "model with torch.jit.script(model).save(path), or give a JSON config + "
                "safetensors weights (pickled checkpoints are refused)"
            ) from None
    for param in model.parameters():  # ScriptModules lack requires_grad_()
        param.requires_grad_(False)
    return model.eval().to(device)


class ClassifierReward:
    """r = p(class | x0) (mode "prob") or 1 - p(class | x0) (mode "not_prob"), for every role."""

    name = "classifier"

    def __init__(
        self,
        model: nn.Module,
        class_index: int,
        *,
        head: int | str | None = None,
        output: Literal["logits", "probs"] = "logits",
        mode: Literal["prob", "not_prob"] = "prob",
        image_size: int | None = None,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
    ) -> None:
        self.model, self.class_index, self.head = model, class_index, head
        self.output, self.mode, self.image_size = output, mode, image_size
        self.batch_size, self.device = batch_size, torch.device(device)

    def _select(self, out: Any) -> Tensor:
        if self.head is not None:
            try:
                out = out[self.head]
            except (KeyError, IndexError, TypeError):
                raise ValueError(
                    f"reward.classifier.head = {self.head!r} does not name an output of the "
                    f"classifier (it returned {type(out).__name__}); use a tuple index or dict key"
                ) from None
        if not isinstance(out, Tensor) or out.ndim != 2:
            raise ValueError(
                f"the classifier returned {type(out).__name__} "
                f"{tuple(out.shape) if isinstance(out, Tensor) else ''}, not a (B, C) tensor; set "
                "reward.classifier.head to pick one head of a multi-head classifier"
            )
        if not 0 <= self.class_index < out.shape[1]:
            raise ValueError(
                f"reward.classifier.class_index = {self.class_index} is out of range: the "
                f"classifier has {out.shape[1]} classes"
            )
        return out

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str], roles: list[str]) -> Tensor:
        """(B, H, W, 3) uint8 -> (B,) float32 rewards on the CPU; prompts and roles unused."""
        check_inputs(images, prompts, roles)
        rewards = []
        for chunk in images.split(self.batch_size):
            x = uint8_to_unit(chunk.to(self.device))
            if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size,) * 2:
                x = F.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", antialias=True)
            out = self._select(self.model(x)).float()
            probs = out.softmax(-1) if self.output == "logits" else out
            p = probs[:, self.class_index]
            rewards.append(1.0 - p if self.mode == "not_prob" else p)
        return torch.cat(rewards).cpu()
