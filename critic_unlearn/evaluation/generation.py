"""Images for evaluation: the unlearned model and the base model on the same prompts and seeds.

Both come from the RL sampling loop (`sample_trajectories`) with the run's sampler settings, so
what is evaluated is the policy that was trained. Seeds start at `eval.seeds_offset` (held out
from training). The base model's images are cached in the run folder, keyed by everything that
determines them, so evaluating many checkpoints of one run samples the base only once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from critic_unlearn.codec import decode_state_dict
from critic_unlearn.config import RunConfig
from critic_unlearn.diffusion.contract import Policy
from critic_unlearn.diffusion.sampling import PromptSpec, sample_trajectories
from critic_unlearn.learner.checkpoint import load_checkpoint
from critic_unlearn.rewards.prompts import Prompt
from critic_unlearn.types import SamplerSettings

ADAPTER_FILES = ("adapter/adapter.safetensors", "checkpoints/latest.safetensors")


@dataclass(frozen=True)
class EvalItem:
    """One image to generate: which prompt, which seed."""

    prompt: Prompt
    seed: int


def eval_items(prompts: list[Prompt], per_prompt: int, seeds_offset: int) -> list[EvalItem]:
    """Every prompt with the same held-out seeds, so before/after and prompts pair up."""
    return [EvalItem(p, seeds_offset + j) for p in prompts for j in range(per_prompt)]


def sampler_settings(cfg: RunConfig) -> SamplerSettings:
    s = cfg.sampler
    return SamplerSettings(s.num_steps, s.eta, s.guidance_scale, s.log_prob_reduction)


@torch.no_grad()
def generate(components: Policy, items: list[EvalItem], cfg: RunConfig) -> Tensor:
    """(N, H, W, 3) uint8, one image per item, in order."""
    settings, s = sampler_settings(cfg), cfg.sampler
    images = []
    for i in range(0, len(items), cfg.eval.batch_size):
        chunk = items[i : i + cfg.eval.batch_size]
        trajs = sample_trajectories(
            components,
            [PromptSpec(it.prompt.id, it.prompt.text, it.prompt.role) for it in chunk],
            [it.seed for it in chunk],
            settings,
            keep_steps=1,
            height=s.height,
            width=s.width,
        )
        images += [t.image for t in trajs]
    return torch.stack(images)


def find_adapter(run_dir: Path) -> dict[str, Tensor]:
    """The run's exported adapter, else the adapter in its latest checkpoint."""
    for name in ADAPTER_FILES:
        path = run_dir / name
        if not path.is_file():
            continue
        if name.startswith("adapter/"):
            tensors, _ = decode_state_dict(path.read_bytes())
            return tensors
        return load_checkpoint(path)["adapter"]
    raise FileNotFoundError(
        f"run folder {str(run_dir)!r} holds no adapter (looked for {', '.join(ADAPTER_FILES)}); "
        "train first (`critic-unlearn train`), or pass the adapter state to evaluate_run"
    )


def base_fingerprint(components: Policy, items: list[EvalItem], cfg: RunConfig) -> str:
    """A key for the base images: model weights (sums per tensor), prompts, seeds, sampler."""
    sums = [
        [float(p.double().sum()), float(p.double().pow(2).sum())]
        for n, p in components.denoiser.named_parameters()
        if "lora_" not in n
    ]
    blob = json.dumps({
        "model": components.model_id,
        "unet": sums,
        "items": [[it.prompt.text, it.seed] for it in items],
        "sampler": cfg.sampler.model_dump(mode="json"),
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def cached_base(path: Path, key: str) -> Tensor | None:
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        if (f.metadata() or {}).get("key") != key:
            return None
    return load_file(str(path))["images"]


def save_base(path: Path, key: str, images: Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({"images": images.contiguous()}, str(tmp), metadata={"key": key})
    tmp.replace(path)
