"""The CLIP concept reward: push forget images away from the concept, keep retain images faithful.

forget: r = -s(x0, concept) + alpha * s(x0, anchor);  retain: r = s(x0, prompt)
with s the cosine similarity of open_clip image and text embeddings (docs/algorithm.md, section 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from critic_unlearn.rewards.clip_text import TextEmbeddingCache
from critic_unlearn.rewards.openclip_loading import LoadedClip
from critic_unlearn.rewards.preprocess import clip_pixels, uint8_to_unit

ROLES = ("forget", "retain")


def check_inputs(images: Tensor, prompts: list[str], roles: list[str]) -> None:
    """Same B everywhere and known roles, or a message saying which was wrong."""
    if not (images.shape[0] == len(prompts) == len(roles)):
        raise ValueError(
            f"reward got {images.shape[0]} images, {len(prompts)} prompts and {len(roles)} roles; "
            "pass one prompt and one role per image"
        )
    bad = sorted({r for r in roles if r not in ROLES})
    if bad:
        raise ValueError(f"unknown prompt roles {bad}; each role is 'forget' or 'retain'")


class ClipConceptReward:
    """Scores decoded x0 images with an open_clip model, in batches, on the model's device."""

    name = "clip_concept"

    def __init__(
        self, clip: LoadedClip, concept: str, anchor: str, anchor_weight: float = 1.0,
        batch_size: int = 32, anchor_substitutes: list[str] | None = None,
    ) -> None:
        self.clip = clip
        self.concept = concept
        self.anchor = anchor
        self.anchor_weight = anchor_weight
        self.batch_size = batch_size
        self.substitutes = list(anchor_substitutes or [])
        self.texts = TextEmbeddingCache(clip)

    @torch.no_grad()
    def image_embeddings(self, images: Tensor) -> Tensor:
        """(B, H, W, 3) uint8 -> (B, D) unit-norm float32 image embeddings."""
        out = []
        for chunk in images.split(self.batch_size):
            x = clip_pixels(uint8_to_unit(chunk.to(self.clip.device)), self.clip.preprocess_cfg)
            out.append(F.normalize(self.clip.model.encode_image(x).float(), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str], roles: list[str]) -> Tensor:
        """(B, H, W, 3) uint8 images of `prompts` -> (B,) float32 rewards on the CPU."""
        check_inputs(images, prompts, roles)
        img = self.image_embeddings(images)  # (B, D)
        if self.substitutes:
            forget = self._per_prompt_forget(img, prompts)
        else:
            concept, anchor = self.texts([self.concept, self.anchor])  # (D,) each
            forget = -(img @ concept) + self.anchor_weight * (img @ anchor)
        retain = (img * self.texts(prompts)).sum(-1)
        is_forget = torch.tensor([r == "forget" for r in roles], device=img.device)
        return torch.where(is_forget, forget, retain).float().cpu()

    def _per_prompt_forget(self, img: Tensor, prompts: list[str]) -> Tensor:
        """-s(x0, prompt) + alpha * max_j s(x0, prompt with concept -> substitute_j).

        The anchor keeps everything but the concept ("a red circle" -> "a blue circle"), so the
        reward asks to change the concept and nothing else: a guard against reward hacking."""
        own = (img * self.texts(prompts)).sum(-1)  # (B,)
        anchors = [[p.replace(self.concept, s) for s in self.substitutes] for p in prompts]
        emb = self.texts([a for row in anchors for a in row])  # (B * S, D)
        sims = (img[:, None, :] * emb.view(len(prompts), len(self.substitutes), -1)).sum(-1)
        return -own + self.anchor_weight * sims.max(dim=1).values
