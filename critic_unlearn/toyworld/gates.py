"""Quality gates: is the world good enough to unlearn in? Measured by the build, on the card.

A world whose base model does not draw the concept cannot show forgetting; a judge or reward CLIP
that cannot tell the classes apart cannot measure or drive it. Generations are sampled with the
same sampler the RL actors use (`sample_trajectories`: DDIM, eta, CFG), on held-out seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from critic_unlearn.diffusion.loading import SDComponents
from critic_unlearn.diffusion.sampling import PromptSpec, sample_trajectories
from critic_unlearn.toyworld.data import COLOURS, SHAPES, pair_names
from critic_unlearn.toyworld.judge import judge_images
from critic_unlearn.types import SamplerSettings

THRESHOLDS = {
    "judge_colour": 0.98,  # judge accuracy per head on held-out real images
    "judge_shape": 0.98,
    "clip_zero_shot": 0.95,  # reward CLIP zero-shot over the 16 pairs, held-out real images
    "colour_overall": 0.95,  # base pipeline generations judged the right colour
    "colour_min_pair": 0.90,
    "both_overall": 0.80,  # right colour and right shape
    "both_min_pair": 0.60,
}


@dataclass(frozen=True)
class SamplerSpec:
    """The RL defaults (config.SamplerConfig), so gates measure the model the actors see."""

    num_steps: int = 20
    eta: float = 1.0
    guidance_scale: float = 5.0
    batch_size: int = 64

    def settings(self) -> SamplerSettings:
        return SamplerSettings(self.num_steps, self.eta, self.guidance_scale)


@torch.no_grad()
def generate(
    components: SDComponents, prompts: list[str], seeds: list[int], sampler: SamplerSpec
) -> Tensor:
    """One image per (prompt, seed): (N, H, W, 3) uint8, through the RL sampling loop."""
    images = []
    for i in range(0, len(prompts), sampler.batch_size):
        specs = [PromptSpec(f"g{j}", p) for j, p in enumerate(prompts[i : i + sampler.batch_size])]
        trajs = sample_trajectories(
            components, specs, seeds[i : i + sampler.batch_size], sampler.settings(), keep_steps=1
        )
        images += [t.image for t in trajs]
    return torch.stack(images)


def pair_accuracy(
    judge: nn.Module, images: Tensor, colour: Tensor, shape: Tensor
) -> dict[str, object]:
    """Judge generated images against the pairs their prompts asked for."""
    pc, ps = judge_images(judge, images)
    ok_c, ok_both = pc == colour, (pc == colour) & (ps == shape)
    per_pair = {}
    for ci, si in {(int(c), int(s)) for c, s in zip(colour, shape, strict=True)}:
        m = (colour == ci) & (shape == si)
        per_pair[f"{COLOURS[ci]} {SHAPES[si]}"] = {
            "colour": ok_c[m].float().mean().item(),
            "both": ok_both[m].float().mean().item(),
        }
    ordered = {k: per_pair[k] for k in sorted(per_pair, key=_pair_order)}
    return {
        "colour_overall": ok_c.float().mean().item(),
        "colour_min_pair": min(v["colour"] for v in ordered.values()),
        "both_overall": ok_both.float().mean().item(),
        "both_min_pair": min(v["both"] for v in ordered.values()),
        "shape_overall": (ps == shape).float().mean().item(),
        "per_pair": ordered,
    }


def _pair_order(name: str) -> int:
    return [f"{c} {s}" for c, s in pair_names()].index(name)


def generation_check(
    components: SDComponents,
    judge: nn.Module,
    templates: list[str],
    per_pair: int,
    seed_offset: int,
    sampler: SamplerSpec,
) -> tuple[dict[str, object], Tensor]:
    """`per_pair` images of each pair, prompts cycling over `templates` ({c}, {s} slots)."""
    from critic_unlearn.toyworld.data import caption

    prompts, seeds, colour, shape = [], [], [], []
    for ci, c in enumerate(COLOURS):
        for si, s in enumerate(SHAPES):
            for j in range(per_pair):
                prompts.append(caption(templates[j % len(templates)], c, s))
                seeds.append(seed_offset + len(seeds))
                colour.append(ci)
                shape.append(si)
    images = generate(components, prompts, seeds, sampler)
    result = pair_accuracy(judge, images, torch.tensor(colour), torch.tensor(shape))
    return result, images


def check(measured: dict[str, float]) -> dict[str, dict[str, float | bool]]:
    """{gate: {value, threshold, passed}} for every gate that was measured."""
    return {
        name: {"value": measured[name], "threshold": t, "passed": measured[name] >= t}
        for name, t in THRESHOLDS.items()
        if name in measured
    }
