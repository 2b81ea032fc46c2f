"""Build the toy world: data, judge, reward CLIP, VAE, text encoder + UNet, gates, model card.

Every stage is seeded, so a build is reproducible on the same machine and library versions.
Everything is written under `<out>.building` and renamed into place at the end, so an interrupted
build never leaves half a world under the final name. Run: `critic-unlearn toyworld build --out DIR
[--reduced]` or `python -m critic_unlearn.toyworld build ...` (the command line is in `cli.py`).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from critic_unlearn.diffusion.loading import SDComponents, load_components
from critic_unlearn.diffusion.tiny import sd_ddim_scheduler
from critic_unlearn.io_utils import image_grid
from critic_unlearn.rewards.classifier import load_classifier
from critic_unlearn.rewards.openclip_loading import load_open_clip
from critic_unlearn.toyworld.build_config import BuildConfig
from critic_unlearn.toyworld.card import code_revision, environment, write_card
from critic_unlearn.toyworld.data import (
    COLOURS,
    HELDOUT_TEMPLATES,
    ShapeData,
    concat,
    make_split,
)
from critic_unlearn.toyworld.diffusion_training import train_diffusion
from critic_unlearn.toyworld.gates import check, generation_check
from critic_unlearn.toyworld.judge import judge_accuracy, save_judge, train_judge
from critic_unlearn.toyworld.pipeline import save_pipeline
from critic_unlearn.toyworld.progress import console
from critic_unlearn.toyworld.reward_clip import save_clip, train_clip, zero_shot_accuracy
from critic_unlearn.toyworld.training import count_params
from critic_unlearn.toyworld.vae import decode, encode, set_scaling_factor, train_vae

CANONICAL = ["a {c} {s}"]


class Timer:
    """Wall and CPU seconds per stage, in order.

    CPU seconds (all threads) tell the compute a stage needs; wall seconds also count the time
    other processes on a shared machine took from it.
    """

    def __init__(self) -> None:
        self.t0 = self.last = time.perf_counter()
        self.c0 = self.last_cpu = time.process_time()
        self.stages: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        self.stages[name] = round(now - self.last, 1)
        self.cpu[name] = round(cpu - self.last_cpu, 1)
        self.last, self.last_cpu = now, cpu
        console.print(f"[bold]{name}[/] done in {self.stages[name]:.0f} s "
                      f"(total {now - self.t0:.0f} s)", highlight=False)

    def total(self) -> dict[str, float]:
        return {**self.stages, "total": round(time.perf_counter() - self.t0, 1)}

    def total_cpu(self) -> dict[str, float]:
        return {**self.cpu, "total": round(time.process_time() - self.c0, 1)}


def _with_shape(data: ShapeData) -> ShapeData:
    keep = (data.colour < len(COLOURS)).nonzero().flatten()
    return ShapeData(data.images[keep], data.colour[keep], data.shape[keep],
                     [data.captions[i] for i in keep.tolist()])


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _swap_into_place(tmp: Path, out: Path) -> None:
    old = out.with_name(out.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old)


def build_world(out: str | Path, cfg: BuildConfig, threads: int = 1) -> dict[str, Any]:
    """Train and save the three models and the card under `out`; returns the card.

    `threads` is how it runs, not what it trains (not part of the config): one thread is the
    default because these models are small, and on a shared 2-core machine a second torch
    thread measured 2-10x slower, not faster (threads wait on each other when a core is taken).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _build(Path(out), cfg)
    finally:
        torch.set_num_threads(before)


def _build(out: Path, cfg: BuildConfig) -> dict[str, Any]:
    tmp = out.with_name(out.name + ".building")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    timer = Timer()
    revision = code_revision()  # at the start: the code that trains is the code that counts
    metrics: dict[str, Any] = {}

    train = make_split(cfg.n_train, cfg.seed * 1000 + 1, none_fraction=cfg.none_fraction)
    val = _with_shape(make_split(cfg.n_val, cfg.seed * 1000 + 2))
    heldout = make_split(cfg.n_heldout, cfg.seed * 1000 + 3, HELDOUT_TEMPLATES,
                         none_fraction=cfg.none_fraction)
    shaped = _with_shape(train)
    full_hue = make_split(cfg.n_full_hue, cfg.seed * 1000 + 4, full_hue=True)
    wide = concat(train, full_hue)  # the judge, CLIP and VAE must also know hues in between
    timer.lap("data")

    save_judge(train_judge(wide, cfg.judge), tmp / "judge", cfg.judge.widths)
    judge = load_classifier(tmp / "judge")  # measure what was saved (fp16 weights)
    metrics["judge"] = judge_accuracy(judge, heldout)
    console.print(f"judge on held-out images: {metrics['judge']}", highlight=False)
    timer.lap("judge")

    save_clip(train_clip(wide, cfg.clip), cfg.clip, tmp / "reward_clip")
    clip = load_open_clip(str(tmp / "reward_clip"))
    ctx = cfg.clip.model_cfg["text_cfg"]["context_length"]
    metrics["clip"] = zero_shot_accuracy(clip.model, heldout, ctx)
    console.print(f"reward CLIP zero-shot: pair {metrics['clip']['pair']:.3f}", highlight=False)
    timer.lap("reward_clip")

    vae = train_vae(_with_shape(wide), cfg.vae)
    val_latents = encode(vae, val.images)
    recon = decode(vae, val_latents)
    mse = ((recon.float() - val.images.float()) / 127.5).pow(2).mean().item()
    rec_judge = judge_accuracy(judge, ShapeData(recon, val.colour, val.shape, val.captions))
    metrics["vae"] = {"mse": mse, "psnr_db": 10 * math.log10(4.0 / max(mse, 1e-12)),
                      "judge_colour": rec_judge["colour"], "judge_shape": rec_judge["shape"]}
    console.print(f"VAE: {metrics['vae']}", highlight=False)
    latents = encode(vae, shaped.images)
    latents = latents * set_scaling_factor(vae, latents)
    timer.lap("vae")

    def components(unet: Any, text_encoder: Any) -> SDComponents:
        from critic_unlearn.diffusion.tiny import clip_tokenizer

        return SDComponents(unet, vae, text_encoder, clip_tokenizer(cfg.diffusion.max_length),
                            sd_ddim_scheduler(), model_id="toyworld-in-training")

    def evaluate(unet: Any, text_encoder: Any) -> dict[str, float]:
        result, _ = generation_check(components(unet, text_encoder), judge, CANONICAL,
                                     cfg.progress_per_pair, cfg.gate_seed_offset, cfg.sampler)
        return {k: v for k, v in result.items() if isinstance(v, float)}

    # the same images; their captions name a random colour `colour_caption_noise` of the time
    noisy = _with_shape(make_split(cfg.n_train, cfg.seed * 1000 + 1,
                                   none_fraction=cfg.none_fraction,
                                   caption_noise=cfg.diffusion.colour_caption_noise))
    assert torch.equal(noisy.images, shaped.images)
    unet, text_encoder, curve = train_diffusion(latents, noisy.captions, cfg.diffusion, evaluate)
    timer.lap("text_encoder_unet")

    save_pipeline(tmp / "pipeline", unet, vae, text_encoder, cfg.diffusion)
    comps = load_components(str(tmp / "pipeline"))  # the fp16 files, as users will load them
    gen, images = generation_check(comps, judge, CANONICAL, cfg.gate_per_pair,
                                   cfg.gate_seed_offset, cfg.sampler)
    metrics["generation"] = gen
    held, _ = generation_check(comps, judge, list(HELDOUT_TEMPLATES), cfg.heldout_template_per_pair,
                               cfg.gate_seed_offset + 1_000_000, cfg.sampler)
    metrics["generation_heldout_templates"] = held
    fast, _ = generation_check(comps, judge, CANONICAL, cfg.gate_per_pair // 2,
                               cfg.gate_seed_offset, cfg.fast_sampler)
    metrics["generation_fast_sampler"] = fast
    cols = min(8, cfg.gate_per_pair)
    per = images.view(16, cfg.gate_per_pair, *images.shape[1:])[:, :cols]
    image_grid(per.reshape(-1, *images.shape[1:]), cols=cols, scale=2).save(tmp / "samples.png")
    timer.lap("gates")

    measured = {
        "judge_colour": metrics["judge"]["colour"],
        "judge_shape": metrics["judge"]["shape"],
        "clip_zero_shot": metrics["clip"]["pair"],
        **{k: gen[k] for k in ("colour_overall", "colour_min_pair", "both_overall",
                               "both_min_pair")},
    }
    gates = check(measured)
    card = {
        "world_format": 1,
        "config": cfg.to_json(),
        "code_revision": revision,
        "environment": environment(),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_s": timer.total(),
        "cpu_s": timer.total_cpu(),
        "load_average_1_5_15_min_at_end": [round(x, 2) for x in os.getloadavg()],
        "parameters": {
            "unet": count_params(comps.unet),
            "text_encoder": count_params(comps.text_encoder),
            "vae": count_params(comps.vae),
            "reward_clip": count_params(clip.model),
            "judge": count_params(judge),
        },
        "size_bytes": _folder_bytes(tmp),
        "gates": gates,
        "gates_passed": all(g["passed"] for g in gates.values()),
        "metrics": metrics,
        "training_curve": curve,
    }
    write_card(tmp, card)
    _swap_into_place(tmp, out)
    verdict = "all gates passed" if card["gates_passed"] else "SOME GATES FAILED"
    console.print(f"toy world written to {out} in {card['wall_s']['total'] / 60:.1f} min, "
                  f"{card['size_bytes'] / 1e6:.1f} MB: {verdict}", highlight=False)
    for name, g in gates.items():
        console.print(f"  {name}: {g['value']:.3f} (>= {g['threshold']}) "
                      f"{'ok' if g['passed'] else 'FAILED'}", highlight=False)
    return card
