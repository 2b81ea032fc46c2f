"""`critic-unlearn eval RUN_DIR`: the command function (mounted by critic_unlearn/cli.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)


def eval_command(
    run_dir: Annotated[Path, typer.Argument(help="run folder (holds config.yaml and the adapter)")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="config overrides, e.g. eval.images_per_prompt=32")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="config YAML (default: RUN_DIR/config.yaml)")
    ] = None,
) -> None:
    """Judge the run's adapter against the base model; write RUN_DIR/eval/ (JSON, table, grids).

    Prints the Markdown table to stderr and one JSON line with ua, ira, base_ua, base_ira,
    the worst retain prompt (worst_retain_prompt, worst_retain_drop_pts: percentage points below
    base, and worst_retain_p: its paired sign-test p), retain_share_below_10,
    retain_significantly_below (the retain prompts whose drop a re-draw of images does not explain,
    Holm 5%) and clip scores to stdout.
    """
    from critic_unlearn.config import load_run_config
    from critic_unlearn.evaluation.drift import share_key
    from critic_unlearn.evaluation.run import evaluate_run

    cfg = load_run_config(run_dir, config, overrides)
    result = evaluate_run(run_dir, cfg)
    console.print((Path(result["out_dir"]) / "eval.md").read_text(), highlight=False,
                  markup=False)
    keys = ("ua", "ira", "base_ua", "base_ira", "worst_retain_prompt", "worst_retain_drop_pts",
            "worst_retain_p", share_key(), "retain_significantly_below", "clip_score",
            "base_clip_score", "out_dir")
    print(json.dumps({k: result[k] for k in keys}))
