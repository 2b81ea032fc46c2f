"""CLIP score: 100 x cosine similarity of an image and its prompt (Hessel et al. 2021, w = 1).

Reported on retain prompts: it falls when unlearning damages what should be kept. Unclipped at
zero, so tiny CLIPs with small similarities still rank models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from critic_unlearn.rewards.openclip_loading import LoadedClip
from critic_unlearn.rewards.preprocess import clip_pixels, uint8_to_unit


@torch.no_grad()
def clip_scores(
    clip: LoadedClip, images: Tensor, prompts: list[str], batch_size: int = 128
) -> Tensor:
    """(N, H, W, 3) uint8 and N prompts -> (N,) float32 CLIP scores."""
    if images.shape[0] != len(prompts):
        raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts; give one each")
    unique = list(dict.fromkeys(prompts))
    tokens = clip.tokenizer(unique).to(clip.device)
    text = F.normalize(clip.model.encode_text(tokens).float(), dim=-1)  # (U, D)
    row = {p: i for i, p in enumerate(unique)}
    index = torch.tensor([row[p] for p in prompts], device=clip.device)
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = images[start : start + batch_size].to(clip.device)
        x = clip_pixels(uint8_to_unit(chunk), clip.preprocess_cfg)
        img = F.normalize(clip.model.encode_image(x).float(), dim=-1)
        out.append(100 * (img * text[index[start : start + batch_size]]).sum(-1))
    return torch.cat(out).cpu()
