"""`critic-unlearn`: the command line. Thin: parse, load config, call library functions.

Errors meant for people (bad config, missing model, corrupt file) print one line and exit with
status 2; nothing prints a traceback for them.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from critic_unlearn.config import ConfigError, dump_config, load_config

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Remove concepts from text-to-image diffusion models with critic-guided RL.",
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect run configurations.")
app.add_typer(config_app, name="config")
console = Console(stderr=True)


class UserError(Exception):
    """An error whose message is the whole story for the user (exit status 2)."""


def _fail(msg: str) -> None:
    console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    sys.exit(2)


@config_app.command("show")
def config_show(
    file: Annotated[Path | None, typer.Argument(help="scenario YAML (omit: defaults)")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="KEY=VALUE overrides")] = None,
) -> None:
    """Print the resolved configuration (file + overrides + defaults) as YAML."""
    cfg = load_config(file, overrides or [])
    sys.stdout.write(dump_config(cfg))


@app.command()
def sample(
    model: Annotated[str, typer.Argument(help="hub id or local folder in diffusers layout")],
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="repeat for several")],
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/sample"),
    num: Annotated[int, typer.Option(help="images per prompt")] = 4,
    seed: Annotated[int, typer.Option(help="first seed; image i uses seed + i")] = 0,
    overrides: Annotated[list[str] | None, typer.Argument(help="e.g. sampler.eta=0.5")] = None,
) -> None:
    """Sample trajectories; write a PNG grid, the trajectories (safetensors) and the config."""
    from critic_unlearn.sample_command import run_sample

    cfg = load_config(None, [f"model.pretrained={model}", *(overrides or [])])
    summary = run_sample(cfg, prompt, out, num=num, seed=seed)
    print(json.dumps(summary))


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="scenario YAML in configs/")],
    overrides: Annotated[list[str] | None, typer.Argument(help="KEY=VALUE overrides")] = None,
) -> None:
    """Unlearn: sample -> reward -> replay -> learn, until learner.max_steps."""
    cfg = load_config(config, overrides or [])
    if cfg.runtime.kind != "local":
        raise UserError(
            f"runtime.kind = {cfg.runtime.kind!r}: the Ray runtime is not part of this version "
            "yet; run with runtime.kind=local (same actor and learner, one process)"
        )
    from critic_unlearn.training.local import train_local

    r = train_local(cfg, console)
    print(
        json.dumps(
            {
                "run_dir": str(r.run_dir),
                "trajectories": r.trajectories,
                "learner_steps": r.learner_steps,
                "version": r.version,
                "wall_s": round(r.wall_s, 2),
            }
        )
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="run folder")] = Path("runs/demo"),
) -> None:
    """The embedded default run. For now: sample from a tiny random model (no download)."""
    from critic_unlearn.diffusion.tiny import build_tiny_model
    from critic_unlearn.sample_command import run_sample

    console.print(
        "[yellow]demo:[/] the toy world and the trainer are not built yet; this demo samples "
        "trajectories with per-step log-probs from a tiny [bold]randomly initialised[/] model "
        "(expect noise, not pictures)."
    )
    t0 = time.perf_counter()
    model_dir = build_tiny_model(Path(".cache/tiny-sd"))
    cfg = load_config(Path("configs/tiny.yaml"), [f"model.pretrained={model_dir}"])
    prompts = ["a red circle", "a blue square"]
    summary = run_sample(cfg, prompts, out, num=4, seed=0)
    summary["wall_s"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(summary))


def main() -> None:
    from critic_unlearn.codec import CodecError
    from critic_unlearn.diffusion.loading import ModelLoadError
    from critic_unlearn.replay import ReplayError
    from critic_unlearn.rewards.openclip_loading import ClipLoadError
    from critic_unlearn.rewards.prompts import PromptError
    from critic_unlearn.toyworld import WorldMissingError

    try:
        app()
    except (
        ConfigError,
        ModelLoadError,
        CodecError,
        ClipLoadError,
        PromptError,
        ReplayError,
        WorldMissingError,
        UserError,
    ) as e:
        _fail(str(e))


if __name__ == "__main__":
    main()
