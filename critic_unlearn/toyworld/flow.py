"""The flow toy world: an SD3-class MMDiT trained by flow matching on the toy world's data.

It stands beside the UNet world and shares what makes the two comparable: the same data splits
(rendered again from the same seeds), the same VAE, the same trained text encoder, the same
judge and reward CLIP. Only the denoiser differs: a tiny `SD3Transformer2DModel` trained with the
rectified-flow objective SD3 uses (x_t = (1 - t) x0 + t eps, target eps - x0, t logit-normal),
sampled by `FlowMatchEulerDiscreteScheduler`, saved as a `StableDiffusion3Pipeline`.

SD3 needs two CLIP text encoders with projections; both are the UNet world's trained encoder
(frozen), given an identity projection, so the pooled embedding is its EOS feature twice. There
is no T5: diffusers conditions on zeros in its place, as for any pipeline saved without it.

Built by `critic-unlearn toyworld build --backbone flow [--reduced]` from the installed UNet
world; written under `<out>.building` and renamed into place, like the UNet world.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from critic_unlearn.diffusion.backbones import load_policy
from critic_unlearn.diffusion.loading import load_components
from critic_unlearn.io_utils import atomic_write_text, image_grid
from critic_unlearn.rewards.classifier import load_classifier
from critic_unlearn.toyworld.card import code_revision, environment
from critic_unlearn.toyworld.data import COLOURS, make_split
from critic_unlearn.toyworld.gates import SamplerSpec, check, generation_check
from critic_unlearn.toyworld.progress import console, stage
from critic_unlearn.toyworld.training import EMA, batch_indices, set_lr, to_fp16_file, warmup_cosine
from critic_unlearn.toyworld.vae import encode

CANONICAL = ["a {c} {s}"]
T5_TOKENS = 0  # no T5 zeros: 16 CLIP tokens condition the model (diffusers' default is 256)


@dataclass(frozen=True)
class FlowConfig:
    name: str = "full"
    data_seed: int = 0  # the UNet world's data splits (BuildConfig.seed)
    n_train: int = 40_000
    none_fraction: float = 0.05
    colour_caption_noise: float = 0.15  # as the UNet world: misdrawn colours at low guidance
    num_layers: int = 6
    num_attention_heads: int = 4
    attention_head_dim: int = 16
    patch_size: int = 1  # 8x8 latents: 64 image tokens
    shift: float = 1.0  # the scheduler's timestep shift (SD3 uses 3.0 at 1024 px)
    steps: int = 6000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 200
    lr_floor: float = 0.1
    caption_dropout: float = 0.1  # empty caption this often, for classifier-free guidance
    ema_decay: float = 0.999
    eval_every: int = 1000
    seed: int = 505
    # gates: the flow toy scenarios' sampler (10 steps, SDE noise 0.7, CFG 5)
    sampler: SamplerSpec = field(default_factory=lambda: SamplerSpec(10, 0.7, 5.0, 64))
    gate_per_pair: int = 64
    gate_seed_offset: int = 10_000_000
    progress_per_pair: int = 8

    @staticmethod
    def reduced() -> FlowConfig:
        return FlowConfig(name="reduced", n_train=256, num_layers=1, num_attention_heads=2,
                          attention_head_dim=8, steps=8, warmup=2, eval_every=8,
                          sampler=SamplerSpec(2, 0.7, 5.0, 32), gate_per_pair=2,
                          progress_per_pair=1)


def projected_text_encoder(text_encoder):
    """The UNet world's CLIPTextModel as a CLIPTextModelWithProjection (identity projection):
    what SD3's pipeline calls for its pooled embedding. Same weights, frozen."""
    from transformers import CLIPTextModelWithProjection

    cfg = copy.deepcopy(text_encoder.config)
    cfg.projection_dim = cfg.hidden_size
    out = CLIPTextModelWithProjection(cfg)
    # CLIPTextModel's keys lack the "text_model." prefix its projected sibling has
    state = {"text_model." + k: v for k, v in text_encoder.state_dict().items()}
    missing, unexpected = out.load_state_dict(state, strict=False)
    assert not unexpected and missing == ["text_projection.weight"], (missing, unexpected)
    with torch.no_grad():
        out.text_projection.weight.copy_(torch.eye(cfg.hidden_size))
    return out.eval().requires_grad_(False)


def build_pipeline(cfg: FlowConfig, vae, text_encoder, tokenizer, latent_size: int):
    """A StableDiffusion3Pipeline with a fresh tiny MMDiT around the UNet world's parts."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    torch.manual_seed(cfg.seed)
    vae = copy.deepcopy(vae)
    vae.register_to_config(shift_factor=0.0)  # SD3's decode adds it; the toy VAE has none
    te = projected_text_encoder(text_encoder)
    hidden = te.config.hidden_size
    transformer = SD3Transformer2DModel(
        sample_size=latent_size,
        patch_size=cfg.patch_size,
        in_channels=vae.config.latent_channels,
        out_channels=vae.config.latent_channels,
        num_layers=cfg.num_layers,
        attention_head_dim=cfg.attention_head_dim,
        num_attention_heads=cfg.num_attention_heads,
        joint_attention_dim=2 * hidden,  # the two CLIPs' hidden states side by side
        caption_projection_dim=cfg.attention_head_dim * cfg.num_attention_heads,
        pooled_projection_dim=2 * hidden,
        pos_embed_max_size=latent_size // cfg.patch_size,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer, vae=vae, text_encoder=te, text_encoder_2=copy.deepcopy(te),
        text_encoder_3=None, tokenizer=tokenizer, tokenizer_2=copy.deepcopy(tokenizer),
        tokenizer_3=None, scheduler=FlowMatchEulerDiscreteScheduler(shift=cfg.shift),
    )


@torch.no_grad()
def caption_table(pipe, captions: list[str]) -> tuple[list[str], Tensor, Tensor]:
    """Each distinct caption (and "") encoded once by the frozen encoders: (texts, embeds,
    pooled), rows in `texts` order; "" is row 0."""
    texts = [""] + sorted(set(captions) - {""})
    embeds, pooled = [], []
    for i in range(0, len(texts), 256):
        e, _, p, _ = pipe.encode_prompt(prompt=texts[i:i + 256], prompt_2=None, prompt_3=None,
                                        do_classifier_free_guidance=False, device="cpu",
                                        max_sequence_length=T5_TOKENS)
        embeds.append(e)
        pooled.append(p)
    return texts, torch.cat(embeds), torch.cat(pooled)


def logit_normal(n: int, g: torch.Generator) -> Tensor:
    """SD3's training times: t = sigmoid(N(0, 1)), dense in the middle of (0, 1)."""
    return torch.sigmoid(torch.randn(n, generator=g))


def train_flow(pipe, latents: Tensor, captions: list[str], cfg: FlowConfig, evaluate=None):
    """Train the transformer by flow matching; returns the EMA transformer and the curve."""
    g = torch.Generator().manual_seed(cfg.seed)
    texts, embeds, pooled = caption_table(pipe, captions)
    row = {t: i for i, t in enumerate(texts)}
    ids = torch.tensor([row[c] for c in captions])
    model = pipe.transformer.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    ema = EMA(model, cfg.ema_decay)
    history: list[dict[str, float]] = []
    with stage("MMDiT (flow matching)", cfg.steps) as bar:
        for step, idx in enumerate(batch_indices(len(captions), cfg.batch_size, cfg.steps, g)):
            set_lr(opt, cfg.lr * warmup_cosine(step, cfg.steps, cfg.warmup, cfg.lr_floor))
            b = len(idx)
            rows = ids[idx].clone()
            rows[torch.rand(b, generator=g) < cfg.caption_dropout] = 0  # the empty caption
            x0 = latents[idx]
            t = logit_normal(b, g)
            noise = torch.randn(x0.shape, generator=g)
            s = t.view(b, 1, 1, 1)
            x_t = (1 - s) * x0 + s * noise
            v = model(hidden_states=x_t, timestep=t * 1000, encoder_hidden_states=embeds[rows],
                      pooled_projections=pooled[rows]).sample
            loss = F.mse_loss(v, noise - x0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            ema.update(model)
            bar.update(loss=loss.item())
            done = step + 1
            if evaluate is not None and cfg.eval_every and done % cfg.eval_every == 0:
                metrics = {"step": float(done), "elapsed_s": bar.elapsed, **evaluate(ema.model)}
                history.append(metrics)
                bar.note(f"step {done}: " + " ".join(
                    f"{k} {v:.3g}" for k, v in metrics.items() if k != "step"))
    return ema.model, history


def build_flow_world(out: str | Path, unet_world: Path, cfg: FlowConfig,
                     threads: int = 1) -> dict[str, Any]:
    """Train and save the flow world's pipeline and card under `out`; returns the card."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _build(Path(out), Path(unet_world), cfg)
    finally:
        torch.set_num_threads(before)


def _build(out: Path, unet_world: Path, cfg: FlowConfig) -> dict[str, Any]:
    from critic_unlearn.diffusion.contract import POLICY_SETTINGS
    from critic_unlearn.diffusion.sd3 import SD3Policy

    tmp = out.with_name(out.name + ".building")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    t0, c0 = time.perf_counter(), time.process_time()
    revision = code_revision()
    base = load_components(str(unet_world / "pipeline"))
    judge = load_classifier(unet_world / "judge")
    # the UNet world's training images and noisy captions, rendered again from the same seeds
    train = make_split(cfg.n_train, cfg.data_seed * 1000 + 1, none_fraction=cfg.none_fraction,
                       caption_noise=cfg.colour_caption_noise)
    keep = (train.colour < len(COLOURS)).nonzero().flatten()  # images with a shape
    with torch.no_grad():
        latents = encode(base.vae, train.images[keep]) * base.vae.config.scaling_factor
    captions = [train.captions[i] for i in keep.tolist()]
    pipe = build_pipeline(cfg, base.vae, base.text_encoder, base.tokenizer, latents.shape[-1])
    pipe.set_progress_bar_config(disable=True)

    def evaluate(transformer) -> dict[str, float]:
        trained = copy.copy(pipe)
        trained.transformer = transformer
        policy = SD3Policy(trained, model_id="toyworld-flow-in-training",
                           max_sequence_length=T5_TOKENS)
        result, _ = generation_check(policy, judge, CANONICAL, cfg.progress_per_pair,
                                     cfg.gate_seed_offset, cfg.sampler)
        return {k: v for k, v in result.items() if isinstance(v, float)}

    transformer, curve = train_flow(pipe, latents, captions, cfg, evaluate)
    train_s = time.perf_counter() - t0
    pipe.transformer = transformer
    pipe.save_pretrained(tmp / "pipeline", safe_serialization=True)
    atomic_write_text(tmp / "pipeline" / POLICY_SETTINGS,
                      json.dumps({"max_sequence_length": T5_TOKENS}) + "\n")
    for f in (tmp / "pipeline").rglob("*.safetensors"):
        to_fp16_file(f)
    policy = load_policy(str(tmp / "pipeline"))  # the fp16 files, as users will load them
    gen, images = generation_check(policy, judge, CANONICAL, cfg.gate_per_pair,
                                   cfg.gate_seed_offset, cfg.sampler)
    cols = min(8, cfg.gate_per_pair)
    per = images.view(16, cfg.gate_per_pair, *images.shape[1:])[:, :cols]
    image_grid(per.reshape(-1, *images.shape[1:]), cols=cols, scale=2).save(tmp / "samples.png")
    measured = {k: gen[k] for k in ("colour_overall", "colour_min_pair", "both_overall",
                                    "both_min_pair")}
    gates = check(measured)
    card = {
        "world_format": 1,
        "backbone": "flow",
        "config": json_ready(asdict(cfg)),
        "shared_with_unet_world": ["vae", "text_encoder", "judge", "reward_clip", "data"],
        "code_revision": revision,
        "environment": environment(),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_s": {"train": round(train_s, 1), "total": round(time.perf_counter() - t0, 1)},
        "cpu_s": round(time.process_time() - c0, 1),
        "load_average_1_5_15_min_at_end": [round(x, 2) for x in os.getloadavg()],
        "parameters": {"transformer": sum(p.numel() for p in policy.denoiser.parameters())},
        "size_bytes": sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()),
        "gates": gates,
        "gates_passed": all(g["passed"] for g in gates.values()),
        "metrics": {"generation": gen},
        "training_curve": curve,
    }
    write_flow_card(tmp, card)
    old = out.with_name(out.name + ".old")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    verdict = "all gates passed" if card["gates_passed"] else "SOME GATES FAILED"
    console.print(f"flow world written to {out} in {card['wall_s']['total'] / 60:.1f} min, "
                  f"{card['size_bytes'] / 1e6:.1f} MB: {verdict}", highlight=False)
    return card


def write_flow_card(folder: Path, card: dict[str, Any]) -> None:
    """model_card.json (everything) and README.md (how it was trained, what the gates measured)."""
    c = card["config"]
    verdict = "all gates passed" if card["gates_passed"] else "**some gates FAILED**"
    lines = [
        f"# critic-unlearn flow toy world ({c['name']} build)",
        "",
        "The toy world's coloured shapes drawn by an SD3-class model: a "
        f"{card['parameters']['transformer']:,}-parameter `SD3Transformer2DModel` "
        f"({c['num_layers']} joint blocks, {c['num_attention_heads']} heads of "
        f"{c['attention_head_dim']}, patch {c['patch_size']}) trained by flow matching "
        f"(rectified flow, logit-normal times, {c['steps']} steps of batch {c['batch_size']}, "
        f"lr {c['lr']}, EMA {c['ema_decay']}, {c['caption_dropout']:.0%} empty captions), "
        "sampled by `FlowMatchEulerDiscreteScheduler`, saved as a `StableDiffusion3Pipeline`. "
        "VAE, text encoder (as both CLIP encoders, identity projection), judge, reward CLIP and "
        "data are the UNet world's: the two backbones differ only in the denoiser. No T5, and no "
        "T5 zeros either: sample it with `max_sequence_length=0` in a stock pipeline (our "
        "loader reads it from pipeline/critic_unlearn_policy.json).",
        "",
        f"Gates (the judge on {c['gate_per_pair']} images per colour-shape pair, held-out seeds, "
        f"{c['sampler']['num_steps']} steps, SDE noise {c['sampler']['eta']}, CFG "
        f"{c['sampler']['guidance_scale']}): {verdict}.",
        "",
        "| gate | value | threshold | |",
        "|---|---|---|---|",
        *[f"| {k} | {g['value']:.3f} | {g['threshold']} | {'ok' if g['passed'] else 'FAILED'} |"
          for k, g in card["gates"].items()],
        "",
        f"Built in {card['wall_s']['total'] / 60:.1f} min wall ({card['cpu_s'] / 60:.1f} min CPU), "
        f"{card['size_bytes'] / 1e6:.1f} MB. Everything else: model_card.json.",
    ]
    atomic_write_text(folder / "model_card.json", json.dumps(card, indent=2) + "\n")
    atomic_write_text(folder / "README.md", "\n".join(lines) + "\n")


def json_ready(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    return x if not isinstance(x, float) or math.isfinite(x) else str(x)
