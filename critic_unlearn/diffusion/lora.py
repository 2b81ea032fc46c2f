"""LoRA adapters on the UNet through peft: attach, read and write them as plain tensors.

Only the adapter is trained and shipped between processes. `base_policy` switches the adapters
off, which gives the base model exactly (peft skips the LoRA branch altogether).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model_state_dict
from torch import Tensor

from critic_unlearn.codec import checksum
from critic_unlearn.config import LoraConfig

ADAPTER = "unlearn"


def peft_config(cfg: LoraConfig) -> PeftLoraConfig:
    init = True if cfg.init == "default" else cfg.init  # peft's True = Kaiming A, zero B
    return PeftLoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        init_lora_weights=init,
    )


def lora_config_hash(cfg: LoraConfig) -> str:
    """A short, stable id of the adapter's shape; actors refuse weights of another shape."""
    blob = json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def adapter_manifest(model_id: str, lora_hash: str, state: dict[str, Tensor], version: int) -> dict:
    """What an actor checks before applying weights: same base model, same LoRA shape, intact."""
    return {
        "base_model": model_id,
        "lora_config_hash": lora_hash,
        "checksum": checksum("adapter", str(version), state),
        "version": str(version),
    }


def attach_lora(unet: UNet2DConditionModel, cfg: LoraConfig) -> list[str]:
    """Add the adapter to `unet` in place; returns the names of the trainable parameters.

    The LoRA weights are fp32 whatever the base weights' dtype (peft would give them the base's
    fp16/bf16): the learner trains them in fp32, and an actor must hold exactly the values the
    learner published, or the importance ratio at equal versions is not 1.
    """
    try:
        unet.add_adapter(peft_config(cfg), adapter_name=ADAPTER)
    except ValueError as e:
        raise ValueError(
            f"lora.target_modules = {list(cfg.target_modules)} matched nothing usable in the "
            f"UNet ({e}); use names of its Linear/Conv layers such as to_q, to_k, to_v, to_out.0"
        ) from None
    names = [n for n, p in unet.named_parameters() if "lora_" in n]
    for n, p in unet.named_parameters():
        p.requires_grad_("lora_" in n)
        if "lora_" in n and p.dtype != torch.float32:
            p.data = p.data.float()
    return names


def adapter_parameters(unet: UNet2DConditionModel) -> dict[str, torch.nn.Parameter]:
    """peft's state-dict key -> the live LoRA parameter, built once and kept on the UNet.

    peft's own get/set walk the whole model every call (~25 ms per apply at SD-1.5 size); the
    actors apply a new adapter every version, so we map keys to parameters once. Parameter
    objects survive `.data` swaps (fp32 casting), so the map never goes stale.
    """
    cached = getattr(unet, "_critic_unlearn_lora", None)
    if cached is None:
        infix = f".{ADAPTER}."
        cached = {n.replace(infix, "."): p for n, p in unet.named_parameters() if infix in n}
        expected = set(get_peft_model_state_dict(unet, adapter_name=ADAPTER))
        if set(cached) != expected:  # peft changed its naming: fall back loudly, not silently
            raise RuntimeError(
                f"LoRA parameter names do not match peft's state-dict keys "
                f"({sorted(set(cached) ^ expected)[:2]}); update adapter_parameters for this peft"
            )
        unet._critic_unlearn_lora = cached
    return cached


def get_adapter_state(unet: UNet2DConditionModel) -> dict[str, Tensor]:
    """The adapter's tensors (detached CPU copies), keyed as peft names them."""
    return {
        k: p.detach().to("cpu", copy=True).contiguous() for k, p in adapter_parameters(unet).items()
    }


@torch.no_grad()
def set_adapter_state(unet: UNet2DConditionModel, state: dict[str, Tensor]) -> None:
    """Load adapter tensors in place; every key and shape must match (no partial loads)."""
    own = adapter_parameters(unet)
    if set(own) != set(state):
        extra, missing = sorted(set(state) - set(own)), sorted(set(own) - set(state))
        raise ValueError(
            f"adapter state does not match this UNet's LoRA: {len(missing)} missing "
            f"(e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]}); was it trained "
            "with another lora config or base model?"
        )
    bad = [k for k, v in state.items() if v.shape != own[k].shape]
    if bad:
        raise ValueError(
            f"adapter tensor {bad[0]} has shape {tuple(state[bad[0]].shape)}, this UNet's LoRA "
            f"expects {tuple(own[bad[0]].shape)}: another lora.rank or base model?"
        )
    for k, v in state.items():
        own[k].copy_(v)


@contextmanager
def base_policy(unet: UNet2DConditionModel) -> Iterator[None]:
    """Run the UNet with its adapters switched off: the base model, exactly."""
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()
