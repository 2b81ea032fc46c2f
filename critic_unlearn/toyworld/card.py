"""The world's model card: what was trained, from which code and config, how long, how good.

Two files: `model_card.json` (read by tests and tools) and `README.md` (the same, for people).
"""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any

from critic_unlearn.io_utils import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[2]


def code_revision() -> dict[str, Any]:
    """The git commit the build ran from and the toy-world files that differed from it."""
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10,
            check=True,
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--", "critic_unlearn/toyworld",  # not the outputs
                    ":!critic_unlearn/toyworld/world", ":!critic_unlearn/toyworld/world.*"
                    ).splitlines()
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown (not a git checkout)", "uncommitted_changes": []}
    return {"commit": commit, "uncommitted_changes": [ln[3:] for ln in dirty]}


def environment() -> dict[str, str]:
    import diffusers
    import open_clip
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "open_clip": open_clip.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _gate_table(gates: dict[str, dict]) -> list[str]:
    rows = ["| gate | measured | threshold | passed |", "|---|---|---|---|"]
    for name, g in gates.items():
        mark = "yes" if g["passed"] else "**NO**"
        rows.append(f"| {name} | {_pct(g['value'])} | {_pct(g['threshold'])} | {mark} |")
    return rows


def _pair_table(per_pair: dict[str, dict[str, float]]) -> list[str]:
    rows = ["| pair | colour right | colour + shape right |", "|---|---|---|"]
    rows += [f"| {k} | {_pct(v['colour'])} | {_pct(v['both'])} |" for k, v in per_pair.items()]
    return rows


def _hue_ranges() -> str:
    from critic_unlearn.toyworld.data import COLOURS, HUE_SPREAD, HUES

    return ", ".join(f"{c} {HUES[c]:.0f}+-{HUE_SPREAD[c]:.0f} deg" for c in COLOURS)


def _changes(files: list[str]) -> str:
    return f", with uncommitted changes in {', '.join(files)}" if files else ""


def _noise(card: dict[str, Any]) -> str:
    return f"{card['config']['diffusion'].get('colour_caption_noise', 0.0):.0%}"


def render_markdown(card: dict[str, Any]) -> str:
    m = card["metrics"]
    verdict = "all gates passed" if card["gates_passed"] else "**some gates FAILED**"
    lines = [
        f"# critic-unlearn toy world ({card['config']['name']} build)",
        "",
        "A tiny text-to-image world in which forgetting is measurable: 32x32 images of one "
        "coloured shape (red/green/blue/yellow x circle/square/triangle/cross) on a grey "
        "background, captioned from templates with synonyms. Three models, all trained by "
        "`critic-unlearn toyworld build`:",
        "",
        "Colours are HSV hue ranges (" + _hue_ranges() + "): the pipeline draws a range of "
        "shades per colour, while the judge and the reward CLIP were also trained on every hue "
        "in between (labelled with the nearest colour), so any drift is judged. The reward "
        "CLIP still scores hue in steps (flat within a colour, rising over ~10 degrees at a "
        "boundary), so shades alone give RL nothing to follow: the pipeline's training "
        f"captions name a random colour {_noise(card)} of the time, and at low guidance "
        "(CFG 1-1.5) it misdraws a colour now and then, as real models misdraw prompts. That "
        "is what RL unlearning explores from; at CFG 5 (the gates below) it never misdraws.",
        "",
        "- `pipeline/`: Stable Diffusion layout (CLIP tokenizer, tiny CLIP text encoder, UNet on "
        "8x8x4 latents, AutoencoderKL, DDIM); load with `StableDiffusionPipeline.from_pretrained`.",
        "- `reward_clip/`: open_clip, ResNet image tower, trained contrastively; "
        "`reward.clip_model: toyworld`.",
        "- `judge/`: independent CNN with colour and shape heads (5 classes each, incl. `none`); "
        "used only by the evaluation.",
        "",
        f"Quality: {verdict}. Build wall time {card['wall_s']['total'] / 60:.1f} min "
        f"({card['environment']['machine']}). Size on disk {card['size_bytes'] / 1e6:.1f} MB.",
        f"Code revision `{card['code_revision']['commit']}`"
        + _changes(card["code_revision"]["uncommitted_changes"]) + ".",
        "",
        "## Quality gates",
        "",
        *_gate_table(card["gates"]),
        "",
        f"Generations: {card['config']['gate_per_pair']} per pair, prompt `a <colour> <shape>`, "
        f"held-out seeds from {card['config']['gate_seed_offset']}, DDIM "
        f"{card['config']['sampler']['num_steps']} steps, eta {card['config']['sampler']['eta']}, "
        f"CFG {card['config']['sampler']['guidance_scale']}, reloaded fp16 weights.",
        "",
        *_pair_table(m["generation"]["per_pair"]),
        "",
        "## Held-out templates (reported, not gated)",
        "",
        f"Colour right {_pct(m['generation_heldout_templates']['colour_overall'])}, colour + "
        f"shape right {_pct(m['generation_heldout_templates']['both_overall'])} (worst pair "
        f"{_pct(m['generation_heldout_templates']['both_min_pair'])}).",
        "",
        "## Few-step sampler (reported, not gated)",
        "",
        f"DDIM {card['config']['fast_sampler']['num_steps']} steps, CFG "
        f"{card['config']['fast_sampler']['guidance_scale']} (the toy scenarios' RL setting): "
        f"colour right {_pct(m['generation_fast_sampler']['colour_overall'])}, colour + shape "
        f"right {_pct(m['generation_fast_sampler']['both_overall'])} (worst pair "
        f"{_pct(m['generation_fast_sampler']['both_min_pair'])}).",
        "",
        "## Other measurements",
        "",
        f"- judge on held-out real images: colour {_pct(m['judge']['colour'])}, shape "
        f"{_pct(m['judge']['shape'])}",
        f"- reward CLIP zero-shot on held-out real images: pair {_pct(m['clip']['pair'])}, colour "
        f"{_pct(m['clip']['colour'])}, shape {_pct(m['clip']['shape'])}",
        f"- VAE on validation images: PSNR {m['vae']['psnr_db']:.1f} dB; judge on "
        f"reconstructions colour {_pct(m['vae']['judge_colour'])}, shape "
        f"{_pct(m['vae']['judge_shape'])}",
        "",
        "## Wall time (s)",
        "",
        "CPU seconds count all threads; wall seconds also include time other processes on a "
        "shared machine took.",
        "",
        "| stage | wall s | CPU s |",
        "|---|---|---|",
        *[f"| {k} | {v:.0f} | {card['cpu_s'].get(k, float('nan')):.0f} |"
          for k, v in card["wall_s"].items()],
        "",
        "## Parameters",
        "",
        *[f"- {k}: {v:,}" for k, v in card["parameters"].items()],
        "",
        "## Training curve (text encoder + UNet, EMA weights, few images per pair)",
        "",
        "| step | colour | colour + shape | worst pair |",
        "|---|---|---|---|",
        *[f"| {h['step']:.0f} | {_pct(h['colour_overall'])} | {_pct(h['both_overall'])} | "
          f"{_pct(h['both_min_pair'])} |" for h in card["training_curve"]],
        "",
        "The full build configuration and environment are in `model_card.json`. Rebuild with "
        "`critic-unlearn toyworld build --out DIR`.",
        "",
    ]
    return "\n".join(lines)


def write_card(folder: Path, card: dict[str, Any]) -> None:
    atomic_write_text(folder / "model_card.json", json.dumps(card, indent=2) + "\n")
    atomic_write_text(folder / "README.md", render_markdown(card))
