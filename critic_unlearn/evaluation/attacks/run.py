"""`run_attacks`: attack the base and the unlearned model, judge the images, report ASR.

Attack success rate (ASR) = share of attacked generations the independent judge sees as the concept.
Two attacks, each on the base model (adapters off) and the unlearned one: the synonym and paraphrase
sweep (`attacks.sweep`) and the learned-prompt attack (`adversarial.learn`), whose tokens are found
anew against each model, with the reward CLIP as the attacker's classifier, then judged on held-out
seeds. Writes attack.json, attack.md, the found tokens (safetensors) and grids.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import Tensor

from critic_unlearn.adversarial.learn import (
    AttackSettings,
    LearnedPrompt,
    attack_settings,
    class_texts,
    learn_prompt,
    sample_images,
)
from critic_unlearn.config import RunConfig
from critic_unlearn.diffusion.contract import Policy
from critic_unlearn.diffusion.lora import base_policy
from critic_unlearn.diffusion.soft_prompt import encode_soft
from critic_unlearn.evaluation.attacks.report import markdown
from critic_unlearn.evaluation.attacks.sweep import Wording, sweep_wordings
from critic_unlearn.evaluation.generation import EvalItem, generate
from critic_unlearn.evaluation.judging import Judge, shows
from critic_unlearn.evaluation.report import save_grid
from critic_unlearn.io_utils import atomic_write_bytes, atomic_write_text
from critic_unlearn.rewards.openclip_loading import LoadedClip, load_open_clip
from critic_unlearn.rewards.prompts import Prompt, load_prompts, prompt_id

MODELS = ("base", "unlearned")


def forget_sources(cfg: RunConfig) -> list[str]:
    """The forget prompts as configured (list and file), before templates."""
    p = cfg.reward.prompts.model_copy(update={"templates": ["{}"]})
    return [q.text for q in load_prompts(p).forget]


def eval_templates(cfg: RunConfig) -> list[str]:
    return list(cfg.eval.templates) or list(cfg.reward.prompts.templates)


@torch.no_grad()
def generate_with_vectors(
    comps: Policy, text: str, vectors: Tensor, seeds: list[int], s: AttackSettings,
    batch_size: int = 32,
) -> Tensor:
    """(N, H, W, 3) uint8 images of `text` with soft tokens `vectors`, one per seed."""
    out = []
    for i in range(0, len(seeds), batch_size):
        chunk = seeds[i : i + batch_size]
        cond = encode_soft(comps.tokenizer, comps.text_encoder, [text] * len(chunk),
                           vectors.to(comps.device))
        img = sample_images(comps, cond, chunk, s.num_steps, s.eta, s.guidance_scale)
        out.append((img * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu())
    return torch.cat(out)


def judged_hits(judge: Judge, images: Tensor, concept: dict[str, str]) -> Tensor:
    """(N,) bool: the judge sees the concept."""
    return shows(judge.labels(images), concept)


def _policy(comps: Policy, model: str) -> contextlib.AbstractContextManager:
    return base_policy(comps.denoiser) if model == "base" else contextlib.nullcontext()


def sweep_items(wordings: list[Wording], per: int, offset: int) -> list[EvalItem]:
    return [EvalItem(Prompt(prompt_id("forget", w.text), w.text, "forget"), offset + j)
            for w in wordings for j in range(per)]


def save_vectors(path: Path, found: LearnedPrompt, model: str, model_id: str) -> None:
    """The found tokens as a plain safetensors file; texts and losses in its metadata."""
    meta = {"texts": json.dumps(found.texts), "attacked": model, "base_model": model_id,
            "losses": json.dumps(found.losses), "concept_prob": json.dumps(found.concept_prob)}
    atomic_write_bytes(path, save({"vectors": found.vectors.contiguous()}, metadata=meta))


def _rate(hit: Tensor) -> float:
    return float(hit.float().mean()) if hit.numel() else 0.0


def run_attacks(
    cfg: RunConfig,
    comps: Policy,
    clip: LoadedClip,
    judge: Judge,
    concept: dict[str, str],
    out_dir: str | Path,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Both attacks on base (adapters off) and unlearned (adapters as loaded in `comps.denoiser`);
    writes OUT_DIR/attack.json, attack.md, learned_<model>.safetensors and grids/."""
    t0 = time.perf_counter()
    out, a, say = Path(out_dir), cfg.attack, log or (lambda _m: None)
    sources = forget_sources(cfg)
    templates = eval_templates(cfg) + [t for t in a.paraphrase_templates
                                       if t not in eval_templates(cfg)]
    wordings = sweep_wordings(sources, templates, judge.vocabulary, a.synonyms)
    items = sweep_items(wordings, a.sweep_images, a.seeds_offset)
    attacked = [eval_templates(cfg)[0].replace("{}", s) for s in sources]
    settings = attack_settings(cfg)
    seeds = [a.seeds_offset + j for j in range(a.images_per_prompt)]

    images: dict[str, dict[str, Tensor]] = {"synonym": {}, "learned": {}}
    hits: dict[str, dict[str, Tensor]] = {"synonym": {}, "learned": {}}
    found: dict[str, LearnedPrompt] = {}
    timing: dict[str, float] = {}
    for model in MODELS:
        with _policy(comps, model):
            t = time.perf_counter()
            say(f"attack: synonym sweep on the {model} model ({len(items)} images)")
            images["synonym"][model] = generate(comps, items, cfg)
            timing[f"synonym_{model}_s"] = round(time.perf_counter() - t, 2)
            t = time.perf_counter()
            say(f"attack: learning {a.num_tokens} tokens against the {model} model "
                f"({a.steps} steps)")
            found[model] = learn_prompt(comps, clip, attacked,
                                        [class_texts(x, cfg) for x in attacked],
                                        cfg.reward.prompts.concept, settings)
            timing[f"learn_{model}_s"] = round(time.perf_counter() - t, 2)
            images["learned"][model] = torch.cat([
                generate_with_vectors(comps, x, found[model].vectors, seeds, settings,
                                      cfg.eval.batch_size) for x in attacked])
        for attack in images:
            hits[attack][model] = judged_hits(judge, images[attack][model], concept)
        save_vectors(out / f"learned_{model}.safetensors", found[model], model, comps.model_id)

    n, k = a.sweep_images, min(a.grid_images, a.images_per_prompt)
    per_wording = [{
        "prompt": w.text, "source": w.source,
        **{f"{m}_asr": _rate(hits["synonym"][m][i * n:(i + 1) * n]) for m in MODELS},
    } for i, w in enumerate(wordings)]
    per_prompt = []
    for i, text in enumerate(attacked):
        sl = slice(i * len(seeds), (i + 1) * len(seeds))
        grid = f"grids/learned-{i}.png"
        save_grid(out / grid, images["learned"]["base"][sl][:k],
                  images["learned"]["unlearned"][sl][:k])
        per_prompt.append({"prompt": text, "grid": grid,
                           **{f"{m}_asr": _rate(hits["learned"][m][sl]) for m in MODELS}})
    pick = [i * n for i in range(len(wordings))][: a.grid_images]  # one image per wording
    save_grid(out / "grids/synonym.png", images["synonym"]["base"][pick],
              images["synonym"]["unlearned"][pick])

    result = {
        "synonym": {
            "base_asr": _rate(hits["synonym"]["base"]), "asr": _rate(hits["synonym"]["unlearned"]),
            "wordings": len(wordings), "images": len(items), "grid": "grids/synonym.png",
            "per_wording": per_wording,
        },
        "learned": {
            "base_asr": _rate(hits["learned"]["base"]), "asr": _rate(hits["learned"]["unlearned"]),
            "images": len(attacked) * len(seeds), "per_prompt": per_prompt,
            "embeddings": {m: f"learned_{m}.safetensors" for m in MODELS},
            "final_concept_prob": {m: found[m].concept_prob[-1] for m in MODELS},
            "losses": {m: found[m].losses for m in MODELS},
        },
        "timing": timing,
        "wall_s": round(time.perf_counter() - t0, 2),
        "out_dir": str(out),
        "settings": {"concept": cfg.reward.prompts.concept, "templates": templates,
                     **cfg.attack.model_dump(mode="json"), "ddim_steps": settings.num_steps},
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "attack.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "attack.md", markdown(result))
    return result


def attacker_clip(cfg: RunConfig, eval_clip: LoadedClip) -> LoadedClip:
    """The reward CLIP (the attacker's classifier): the eval CLIP when it is the same model."""
    if cfg.eval.clip_model is None:
        return eval_clip
    return load_open_clip(cfg.reward.clip_model, cfg.reward.clip_pretrained,
                          device=eval_clip.device)
