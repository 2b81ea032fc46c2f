"""CLIP text embeddings computed once per prompt.

A run has a few hundred distinct prompts at most but embeds them every batch (reward texts, critic
conditioning), so each prompt is encoded once and kept. The cache is bounded (oldest out first).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor

from critic_unlearn.rewards.openclip_loading import LoadedClip


class TextEmbeddingCache:
    """`cache(prompts) -> (N, D)` unit-norm CLIP text embeddings, float32, on the CLIP's device."""

    def __init__(self, clip: LoadedClip, max_size: int = 4096) -> None:
        self.clip = clip
        self.max_size = max_size
        self._store: OrderedDict[str, Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._store)

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> Tensor:
        tokens = self.clip.tokenizer(texts).to(self.clip.device)
        return F.normalize(self.clip.model.encode_text(tokens).float(), dim=-1)

    def __call__(self, prompts: list[str]) -> Tensor:
        new = [p for p in dict.fromkeys(prompts) if p not in self._store]
        if new:
            for text, emb in zip(new, self._encode(new), strict=True):
                self._store[text] = emb
        out = torch.stack([self._store[p] for p in prompts])
        for p in prompts:
            self._store.move_to_end(p)
        while len(self._store) > self.max_size:
            self._store.popitem(last=False)
        return out
