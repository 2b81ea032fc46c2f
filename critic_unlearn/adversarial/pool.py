"""A bounded pool of adversarial soft prompts for the training loop (oldest dropped).

Every N learner steps the learner worker runs the learned-prompt attack against the current
adapter (`adversarial.loop.refresh_pool`) and adds what it found here; actors draw some forget
prompts from the pool, and the learner must re-score those trajectories with the very same
vectors (`encode_mixed`, through `diffusion.soft_prompt.encode_conditioning`). An entry's id is
derived from its text and vector bytes, so the same id means the same conditioning on every
process. The pool travels as one codec blob (safetensors + JSON header + checksum, never pickle)
in the adapter's packet (`adversarial.packets`).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass

import torch
import xxhash
from torch import Tensor
from transformers import CLIPTextModel, CLIPTokenizer

from critic_unlearn.codec import CodecError, decode_state_dict, encode_state_dict
from critic_unlearn.diffusion.soft_prompt import encode_conditioning

ID_PREFIX = "forget-adv-"  # prompt ids of pool prompts (role forget)


@dataclass(frozen=True)
class SoftPrompt:
    id: str
    text: str  # the forget prompt the tokens are put in front of
    vectors: Tensor  # (k, E) float32, CPU


def soft_prompt_id(text: str, vectors: Tensor) -> str:
    h = xxhash.xxh3_64()
    h.update(text.encode())
    h.update(vectors.detach().float().cpu().contiguous().numpy().tobytes())
    return ID_PREFIX + h.hexdigest()[:12]


class SoftPromptPool:
    """At most `size` soft prompts, newest last; adding beyond that drops the oldest."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"attack.pool_size = {size}; keep at least 1 soft prompt")
        self.size = size
        self._items: OrderedDict[str, SoftPrompt] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, prompt_id: str) -> bool:
        return prompt_id in self._items

    @property
    def prompts(self) -> list[SoftPrompt]:
        return list(self._items.values())

    def add(self, text: str, vectors: Tensor) -> SoftPrompt:
        v = vectors.detach().float().cpu().contiguous()
        entry = SoftPrompt(soft_prompt_id(text, v), text, v)
        self._items.pop(entry.id, None)
        self._items[entry.id] = entry
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return entry

    def get(self, prompt_id: str) -> SoftPrompt:
        try:
            return self._items[prompt_id]
        except KeyError:
            raise KeyError(
                f"soft prompt {prompt_id!r} is not in the pool (it holds {len(self)}); it was "
                "dropped before its trajectories were learned from: raise attack.pool_size"
            ) from None

    def sample(self, n: int, generator: torch.Generator) -> list[SoftPrompt]:
        """n entries drawn uniformly with replacement (an empty pool gives none)."""
        if not self._items or n <= 0:
            return []
        idx = torch.randint(0, len(self._items), (n,), generator=generator).tolist()
        items = self.prompts
        return [items[i] for i in idx]

    def to_bytes(self) -> bytes:
        order = [{"id": p.id, "text": p.text} for p in self.prompts]
        meta = {"size": str(self.size), "order": json.dumps(order)}
        return encode_state_dict({p.id: p.vectors for p in self.prompts}, meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> SoftPromptPool:
        tensors, meta = decode_state_dict(data)
        try:
            pool, order = cls(int(meta["size"])), json.loads(meta["order"])
        except (KeyError, ValueError) as e:
            raise CodecError(f"soft-prompt pool blob lacks a valid {e} entry") from None
        for row in order:
            entry = pool.add(row["text"], tensors[row["id"]])
            if entry.id != row["id"]:
                raise CodecError(f"soft prompt {row['id']!r}: vectors do not match its id")
        return pool


def pool_vectors(
    prompt_ids: list[str], pool: SoftPromptPool | None
) -> list[Tensor | None]:
    """Each prompt's soft tokens: a pool entry's vectors for ids starting with ID_PREFIX."""
    soft = [i for i, pid in enumerate(prompt_ids) if pid.startswith(ID_PREFIX)]
    if soft and pool is None:
        raise ValueError(f"prompt {prompt_ids[soft[0]]!r} is a soft prompt but no pool was given")
    return [pool.get(pid).vectors if pid.startswith(ID_PREFIX) else None  # type: ignore[union-attr]
            for pid in prompt_ids]


@torch.no_grad()
def encode_mixed(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, prompt_ids: list[str],
    texts: list[str], pool: SoftPromptPool | None,
) -> Tensor:
    """(B, L, D) conditioning: pool prompts (ids starting with ID_PREFIX) with their soft tokens,
    every other prompt as plain text (`encode_conditioning` with the pool's vectors)."""
    return encode_conditioning(tokenizer, text_encoder, texts, pool_vectors(prompt_ids, pool))
