"""The nudity reward: NudeNet's detector on forget images, the CLIP prompt score on retain images.

forget: r = -max_k score_k(x0) + alpha * s(x0, anchor), k over `reward.nudenet.classes` (0 when
        NudeNet detects none of them); retain: r = s(x0, prompt), s the open_clip cosine similarity.

NudeNet (the `[nudity]` extra) is AGPL-3.0: this module is imported only when reward.name is
"nudenet", and it imports NudeNet only when a reward is built. NudeNet ships its ONNX detector in
its wheel and runs it with onnxruntime, so nothing is downloaded and nothing is unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from critic_unlearn.rewards.clip_concept import ClipConceptReward, check_inputs

INSTALL_HINT = (
    "install the optional extra: pip install -c constraints.txt -e '.[nudity]' (NudeNet, AGPL-3.0)"
)


class NudityRewardError(RuntimeError):
    """NudeNet is missing or misconfigured; the message says what to do."""


def nudenet_labels() -> list[str]:
    """The detector's class names, as NudeNet lists them."""
    module = _import_nudenet()
    return list(vars(module)["__labels"])  # a module global; NudeNet has no public accessor


def _import_nudenet() -> Any:
    try:
        import nudenet.nudenet as module
    except ImportError as e:
        msg = f"reward.name = 'nudenet' needs NudeNet ({e}); {INSTALL_HINT}"
        raise NudityRewardError(msg) from None
    return module


def load_detector(model: Path | None, resolution: int) -> Any:
    """NudeNet's `NudeDetector` on the wheel's ONNX model, or on `model` (an .onnx file)."""
    module = _import_nudenet()
    if model is not None and not Path(model).is_file():
        raise NudityRewardError(
            f"reward.nudenet.model = {str(model)!r} does not exist; point it at a NudeNet .onnx "
            "detector (e.g. 640m.onnx from NudeNet's releases) or leave it unset for the 320n "
            "model that ships in NudeNet's wheel"
        )
    return module.NudeDetector(model_path=str(model) if model else None,
                               inference_resolution=resolution)


class NudityReward:
    """Scores forget images by NudeNet's detections, retain images by their CLIP prompt score."""

    name = "nudenet"

    def __init__(self, detector: Any, clip_reward: ClipConceptReward, classes: list[str],
                 batch_size: int = 32) -> None:
        known = nudenet_labels()
        unknown = [c for c in classes if c not in known]
        if unknown or not classes:
            what = f"names unknown classes {unknown}" if unknown else "is empty"
            raise NudityRewardError(
                f"reward.nudenet.classes = {classes} {what}; use some of NudeNet's classes: {known}"
            )
        self.detector = detector
        self.clip_reward = clip_reward
        self.classes = set(classes)
        self.batch_size = batch_size

    def nudity(self, images: Tensor) -> Tensor:
        """(B, H, W, 3) uint8 -> (B,) the highest detector score among the nudity classes."""
        arrays = list(images.cpu().numpy())  # RGB: NudeNet converts to BGR and back itself
        found = self.detector.detect_batch(arrays, batch_size=self.batch_size)
        return torch.tensor(
            [max((d["score"] for d in dets if d["class"] in self.classes), default=0.0)
             for dets in found], dtype=torch.float32,
        )

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str], roles: list[str]) -> Tensor:
        """(B, H, W, 3) uint8 images of `prompts` -> (B,) float32 rewards on the CPU."""
        check_inputs(images, prompts, roles)
        clip = self.clip_reward
        img = clip.image_embeddings(images)
        anchor = clip.texts([clip.anchor])[0]
        retain = (img * clip.texts(prompts)).sum(-1).float().cpu()
        is_forget = torch.tensor([r == "forget" for r in roles])
        forget = torch.zeros(len(prompts))
        if is_forget.any():
            idx = is_forget.nonzero().flatten()
            forget[idx] = (-self.nudity(images[idx])
                           + clip.anchor_weight * (img[idx.to(img.device)] @ anchor).float().cpu())
        return torch.where(is_forget, forget, retain)
