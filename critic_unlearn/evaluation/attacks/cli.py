"""`critic-unlearn attack RUN_DIR`: load a run's model, adapter, reward CLIP and judge, attack.

Mounted by critic_unlearn/cli.py. Writes RUN_DIR/attack/ (or --out): attack.json, attack.md,
the learned tokens (learned_base.safetensors, learned_unlearned.safetensors) and grids/.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from critic_unlearn.config import ConfigError, RunConfig, load_run_config

console = Console(stderr=True)


def attack_run_dir(run_dir: str | Path, cfg: RunConfig,
                   out_dir: str | Path | None = None) -> dict[str, Any]:
    """Attack the run's adapter (exported, else latest checkpoint) and its base model."""
    import torch

    from critic_unlearn.adversarial.learn import require_soft_prompts
    from critic_unlearn.device import resolve_device
    from critic_unlearn.diffusion.lora import attach_lora, set_adapter_state
    from critic_unlearn.diffusion.soft_prompt import SoftPromptError
    from critic_unlearn.evaluation.attacks.run import run_attacks
    from critic_unlearn.evaluation.generation import find_adapter
    from critic_unlearn.evaluation.judging import EvaluationError
    from critic_unlearn.evaluation.run import load_eval_judge, load_eval_model
    from critic_unlearn.rewards.openclip_loading import load_open_clip

    if cfg.runtime.num_threads:
        torch.set_num_threads(cfg.runtime.num_threads)
    run_dir = Path(run_dir)
    device = resolve_device(cfg.runtime.device)
    state = find_adapter(run_dir)
    judge, concept = load_eval_judge(cfg, device)
    if judge is None:
        raise ConfigError(
            "eval.judge = None: the attacks' success rate needs a judge; set eval.judge to a "
            "judge folder or source name (e.g. toyworld)"
        )
    clip = load_open_clip(cfg.reward.clip_model, cfg.reward.clip_pretrained, device=device)
    comps = load_eval_model(cfg, device)
    require_soft_prompts(comps, "the attack command")
    attach_lora(comps.denoiser, cfg.lora)
    set_adapter_state(comps.denoiser, {k: v.to(device) for k, v in state.items()})
    out = Path(out_dir) if out_dir is not None else run_dir / "attack"
    try:
        return run_attacks(cfg, comps, clip, judge, concept, out, log=console.print)
    except (SoftPromptError, EvaluationError) as e:
        raise ConfigError(str(e)) from None


def attack_command(
    run_dir: Annotated[Path, typer.Argument(help="run folder (holds config.yaml and the adapter)")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="config overrides, e.g. attack.steps=60")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="config YAML (default: RUN_DIR/config.yaml)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default RUN_DIR/attack)")] = None,
) -> None:
    """Attack the unlearned model and its base: synonym/paraphrase sweep and a learned-prompt
    attack (soft tokens optimised against the reward CLIP), judged by the independent judge.

    Prints the Markdown table to stderr and one JSON line with each attack's ASR to stdout.
    """
    cfg = load_run_config(run_dir, config, overrides)
    r = attack_run_dir(run_dir, cfg, out)
    console.print((Path(r["out_dir"]) / "attack.md").read_text(), highlight=False, markup=False)
    print(json.dumps({
        "synonym_asr": r["synonym"]["asr"], "synonym_base_asr": r["synonym"]["base_asr"],
        "learned_asr": r["learned"]["asr"], "learned_base_asr": r["learned"]["base_asr"],
        "wall_s": r["wall_s"], "out_dir": r["out_dir"],
    }))
