"""Prompts with learned token embeddings ("soft tokens"): k vectors right after BOS, then the text.

The learned-prompt attack optimises such vectors; with adversarial prompts in the training loop
the actors sample with them and the learner re-scores with them. All three condition through
`encode_soft`: the same token ids, the same embedding rows replaced (a forward hook on the text
encoder's token embedding, so the encoder's own attention mask and positions apply), the same
encoder. The hook keeps the vectors in the autograd graph, so the attack can differentiate.
`encode_conditioning` mixes soft and plain prompts in one batch (the sampler and the learner).
The attack itself and the pool of what it found are in `critic_unlearn.adversarial`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import CLIPTextModel, CLIPTokenizer

from critic_unlearn.diffusion.policy import encode_prompts

PLACEHOLDER_ID = 0  # token id that holds a soft token's place; its embedding row is replaced


class SoftPromptError(ValueError):
    """A soft prompt cannot be encoded as asked; the message says what to change."""


def soft_token_ids(tokenizer: CLIPTokenizer, texts: list[str], k: int) -> Tensor:
    """(B, L) ids: BOS, k placeholders, the text's tokens, EOS, padding to the model length."""
    length = tokenizer.model_max_length
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = []
    for text in texts:
        raw = tokenizer(text, truncation=False).input_ids  # [BOS, ..., EOS]
        if len(raw) + k > length:
            raise SoftPromptError(
                f"prompt {text!r} has {len(raw) - 2} tokens; with {k} soft tokens it needs "
                f"{len(raw) + k} positions but the text encoder has {length}; use a shorter "
                "prompt or fewer soft tokens (attack.num_tokens)"
            )
        row = raw[:1] + [PLACEHOLDER_ID] * k + raw[1:]
        rows.append(row + [pad] * (length - len(row)))
    return torch.tensor(rows, dtype=torch.long)


def encode_soft(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, texts: list[str], vectors: Tensor
) -> Tensor:
    """(B, L, D) conditioning for `texts` with `vectors` ((k, E) shared, or (B, k, E) one set per
    text; E the token-embedding width) in the k positions after BOS. Differentiable in `vectors`;
    wrap in `torch.no_grad()` to act or re-score."""
    if vectors.ndim == 2:
        vectors = vectors.unsqueeze(0).expand(len(texts), -1, -1)
    if vectors.ndim != 3 or vectors.shape[0] != len(texts):
        raise SoftPromptError(
            f"soft-token vectors of shape {tuple(vectors.shape)} for {len(texts)} prompts; give "
            "(k, E) for all prompts or (B, k, E), one set per prompt"
        )
    table = text_encoder.get_input_embeddings()
    if vectors.shape[-1] != table.embedding_dim:
        raise SoftPromptError(
            f"soft tokens are {vectors.shape[-1]} wide but the text encoder's token embedding is "
            f"{table.embedding_dim}; they were found for another model"
        )
    k = vectors.shape[1]
    ids = soft_token_ids(tokenizer, texts, k).to(text_encoder.device)

    def put_vectors(_module: torch.nn.Module, _inputs: tuple, out: Tensor) -> Tensor:
        out = out.clone()
        out[:, 1 : 1 + k] = vectors.to(device=out.device, dtype=out.dtype)
        return out

    handle = table.register_forward_hook(put_vectors)
    try:
        return text_encoder(ids)[0]
    finally:
        handle.remove()


def word_embeddings(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, text: str) -> Tensor:
    """(n, E) token-embedding rows of `text`'s tokens (no BOS/EOS): a soft prompt's start."""
    ids = tokenizer(text, truncation=False).input_ids[1:-1]
    if not ids:
        raise SoftPromptError(f"text {text!r} has no tokens to start soft tokens from")
    table = text_encoder.get_input_embeddings()
    return table.weight[torch.tensor(ids, device=table.weight.device)].detach().float().clone()


@torch.no_grad()
def encode_conditioning(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, texts: list[str],
    soft_tokens: Sequence[Tensor | None] | None,
) -> Tensor:
    """(B, L, D) conditioning: prompt i with its (k, E) soft tokens after BOS when
    `soft_tokens[i]` is given, as plain text otherwise. The one function actors sample with and
    the learner re-scores with, so behaviour and re-scored log-probs see the same embeddings.
    Each soft row is encoded alone, so its values do not depend on the rest of the batch."""
    out = encode_prompts(tokenizer, text_encoder, texts)
    if soft_tokens is None:
        return out
    if len(soft_tokens) != len(texts):
        raise ValueError(f"{len(soft_tokens)} soft-token entries for {len(texts)} prompts")
    for i, vectors in enumerate(soft_tokens):
        if vectors is not None:
            out[i] = encode_soft(tokenizer, text_encoder, [texts[i]], vectors.to(out.device))[0]
    return out
