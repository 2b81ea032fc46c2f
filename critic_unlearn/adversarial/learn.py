"""The learned-prompt attack: k soft tokens that make the model draw the forgotten concept.

In the style of UnlearnDiffAtk / textual-inversion attacks, with the attacker's own classifier
being the reward CLIP: k token embeddings are put after BOS of a forget prompt and optimised with
Adam for a fixed number of steps so that the images the (unlearned) model samples are classified
as the concept by the CLIP, zero-shot among the concept's prompt and its substitutes (the reward's
anchors). The images come from the policy's own sampler, differentiated end to end: every DDIM
step (eta > 0, its noise fixed per seed, a reparameterised sample), the VAE decode and the CLIP
tower. On the toy world that is cheap (8x8 latents); no surrogate loss is needed, so what is
optimised is exactly what is judged afterwards. Fresh seeds every step, so the tokens must work
for any seed, not for the few they were found on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from critic_unlearn.config import RunConfig
from critic_unlearn.diffusion.contract import Policy
from critic_unlearn.diffusion.loading import SDComponents
from critic_unlearn.diffusion.soft_prompt import encode_soft, word_embeddings
from critic_unlearn.rewards.openclip_loading import LoadedClip
from critic_unlearn.rewards.preprocess import clip_pixels

ZERO_SHOT_SCALE = 100.0  # CLIP logit scale when the model carries none (CLIP's trained value)


@dataclass(frozen=True)
class AttackSettings:
    """The attack's budget and sampler (from `attack` and `sampler` in the config)."""

    num_tokens: int
    steps: int
    lr: float
    batch_size: int
    seed: int
    init: str  # "concept": start from the concept words' embeddings; "random"
    num_steps: int  # DDIM steps
    eta: float
    guidance_scale: float


def attack_settings(cfg: RunConfig) -> AttackSettings:
    a, s = cfg.attack, cfg.sampler
    return AttackSettings(a.num_tokens, a.steps, a.lr, a.batch_size, a.seed, a.init,
                          a.sample_steps or s.num_steps, s.eta, s.guidance_scale)


def class_texts(text: str, cfg: RunConfig) -> list[str]:
    """The attacker's zero-shot classes for `text`: itself first, then the reward's anchors
    (the concept swapped for each substitute; without substitutes, the anchor text)."""
    p = cfg.reward.prompts
    if p.anchor_substitutes and p.concept in text:
        return [text] + [text.replace(p.concept, sub) for sub in p.anchor_substitutes]
    return [text, p.anchor]


@dataclass
class LearnedPrompt:
    """What the attack found for a set of prompts: vectors (k, E) and its loss per step."""

    texts: list[str]
    vectors: Tensor
    losses: list[float] = field(default_factory=list)
    concept_prob: list[float] = field(default_factory=list)  # CLIP p(concept) per step


def require_soft_prompts(policy: Policy, what: str) -> None:
    """Stop before any work when the backbone cannot take learned soft tokens."""
    if not policy.soft_prompts:
        raise ValueError(
            f"{what}: the learned-prompt attack puts soft tokens into SD-1.x's CLIP text encoder; "
            f"the {policy.family} backbone has no such seam yet; set attack.enabled=false and "
            "attack.in_loop_every=0 for this model"
        )


def sample_images(
    comps: Policy,
    cond: Tensor,  # (B, L, D)
    seeds: list[int],
    num_steps: int,
    eta: float,
    guidance_scale: float,
) -> Tensor:
    """(B, 3, H, W) images in [0, 1] from the policy's DDIM chain, differentiable in `cond`.

    Noise is drawn per seed exactly as `sample_trajectories` draws it (x_T, then each step's
    variance noise from the same generator), so under no_grad it gives the sampler's images."""
    c = comps
    device = c.device
    shape = c.latent_shape()
    gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    uncond = None
    if guidance_scale != 1.0:
        uncond = c.empty_condition().expand_as(cond)
    x = c.initial_noise(shape, gens)
    for t in c.set_timesteps(num_steps):
        noise = torch.stack([torch.randn(shape, generator=g, device=device) for g in gens])
        x = c.step(x.float(), t, cond, uncond, guidance_scale=guidance_scale, eta=eta,
                   variance_noise=noise).prev_sample
    return (c.decode(x).float() / 2 + 0.5).clamp(0, 1)


def image_features(clip: LoadedClip, images01: Tensor) -> Tensor:
    """(B, D) unit-norm CLIP image embeddings of (B, 3, H, W) images in [0, 1], differentiable."""
    x = clip_pixels(images01.to(clip.device), clip.preprocess_cfg)
    return F.normalize(clip.model.encode_image(x).float(), dim=-1)


def logit_scale(clip: LoadedClip) -> float:
    scale = getattr(clip.model, "logit_scale", None)
    return scale.exp().item() if isinstance(scale, Tensor) else ZERO_SHOT_SCALE


@torch.no_grad()
def class_embeddings(clip: LoadedClip, texts: list[str]) -> Tensor:
    tokens = clip.tokenizer(texts).to(clip.device)
    return F.normalize(clip.model.encode_text(tokens).float(), dim=-1)


def initial_vectors(comps: SDComponents, k: int, init: str, concept: str, seed: int) -> Tensor:
    """(k, E): the concept words' embeddings repeated ("concept"), or random vocabulary rows."""
    table = comps.text_encoder.get_input_embeddings().weight
    if init == "concept":
        words = word_embeddings(comps.tokenizer, comps.text_encoder, concept)
        return words[torch.arange(k) % words.shape[0]].clone()
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, table.shape[0], (k,), generator=g)
    return table[rows.to(table.device)].detach().float().clone()


def learn_prompt(
    comps: SDComponents,
    clip: LoadedClip,
    texts: list[str],
    class_texts: list[list[str]],
    concept: str,
    s: AttackSettings,
    on_step: Callable[[int, float], None] | None = None,
    start: Tensor | None = None,
) -> LearnedPrompt:
    """Optimise one set of k soft tokens for all `texts` so that each text's images are
    classified by `clip` as its `class_texts[j][0]` (against the rest of that row); `s.steps`
    Adam steps of `s.batch_size` images on fresh seeds, the texts taking turns in the batch.
    `start` (k, E): begin from these tokens (a warm start) instead of `s.init`'s."""
    if len(texts) != len(class_texts) or not texts:
        raise ValueError(f"{len(texts)} texts but {len(class_texts)} class-text rows; one each")
    if start is None:
        vectors = initial_vectors(comps, s.num_tokens, s.init, concept, s.seed)
    elif start.shape[0] != s.num_tokens:
        raise ValueError(f"a warm start of {start.shape[0]} tokens for attack.num_tokens = "
                         f"{s.num_tokens}; start from tokens of the same count")
    else:
        vectors = start.detach().float().clone()
    vectors = vectors.to(comps.device).requires_grad_(True)
    opt = torch.optim.Adam([vectors], lr=s.lr)
    targets = [class_embeddings(clip, row) for row in class_texts]
    scale = logit_scale(clip)
    frozen = [p for p in comps.denoiser.parameters() if p.requires_grad]
    for p in frozen:  # the LoRA weights: only the soft tokens are optimised
        p.requires_grad_(False)
    found = LearnedPrompt(texts, vectors)
    try:
        for step in range(s.steps):
            first = s.seed * 1_000_003 + step * s.batch_size
            which = [(first + i) % len(texts) for i in range(s.batch_size)]
            cond = encode_soft(comps.tokenizer, comps.text_encoder, [texts[j] for j in which],
                               vectors)
            seeds = [first + i for i in range(s.batch_size)]
            images = sample_images(comps, cond, seeds, s.num_steps, s.eta, s.guidance_scale)
            feats = image_features(clip, images)
            # log p(class 0) per image, each against its own text's classes
            logp = torch.stack([
                (scale * targets[j] @ feats[i]).log_softmax(-1)[0] for i, j in enumerate(which)
            ])
            loss = -logp.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            found.losses.append(round(loss.item(), 4))
            found.concept_prob.append(round(logp.exp().mean().item(), 4))
            if on_step is not None:
                on_step(step, loss.item())
    finally:
        for p in frozen:
            p.requires_grad_(True)
    found.vectors = vectors.detach().cpu()
    return found
