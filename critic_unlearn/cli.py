"""`critic-unlearn`: the command line. Thin: parse, load config, call library functions.

Errors meant for people (bad config, missing model, corrupt file) print one line and exit with
status 2; nothing prints a traceback for them.
"""

from __future__ import annotations

import json
import sys
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
critic_app = typer.Typer(no_args_is_help=True, help="The critic: pretrain it before RL.")
app.add_typer(critic_app, name="critic")
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


@critic_app.command("pretrain")
def critic_pretrain(
    config: Annotated[Path, typer.Argument(help="scenario YAML in configs/")],
    overrides: Annotated[list[str] | None, typer.Argument(help="KEY=VALUE overrides")] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default: critic.cache_dir "
                                             "entry that critic.init=auto would use)")] = None,
) -> None:
    """Pretrain the critic as a reward predictor on base-policy noisy states (Monte Carlo
    targets); write critic.safetensors, pretrain.json (explained variance per timestep, cost)
    and critic_ev.png. Start a run from it with critic.init=PATH (or critic.init=auto)."""
    from critic_unlearn.device import resolve_device
    from critic_unlearn.training.critic_pretrain import pretrain_critic, pretrain_key

    cfg = load_config(config, overrides or [])
    if not cfg.critic.enabled:
        raise UserError("critic.enabled = false: there is no critic to pretrain")
    folder = out or Path(cfg.critic.cache_dir) / pretrain_key(cfg)
    r = pretrain_critic(cfg, folder, console, resolve_device(cfg.runtime.device))
    print(json.dumps({"path": str(r.path), **{k: r.meta[k] for k in (
        "trajectories", "states", "sample_s", "wall_s", "ev_held_out")}}))


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
    from critic_unlearn.runtime import RuntimeFailure
    from critic_unlearn.runtime import train as run

    cfg = load_config(config, overrides or [])
    try:
        r = run(cfg, console)
    except RuntimeFailure as e:
        raise UserError(str(e)) from None
    print(
        json.dumps(
            {
                "run_dir": str(r.run_dir),
                "trajectories": r.trajectories,
                "learner_steps": r.learner_steps,
                "version": r.version,
                "updates": r.updates,
                "wall_s": round(r.wall_s, 2),
            }
        )
    )


@app.command()
def demo(
    scenario: Annotated[Path | None, typer.Argument(help="scenario YAML")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="KEY=VALUE overrides")] = None,
    backbone: Annotated[str, typer.Option(
        help="unet: the toy world's UNet; flow: the flow toy world's SD3-class MMDiT "
        "(configs/toy_flow_forget_red.yaml)")] = "unet",
) -> None:
    """The embedded default: unlearn "red" in the toy world, evaluate with the judge, report."""
    from critic_unlearn.demo import SCENARIOS, run_demo

    if backbone not in SCENARIOS:
        raise typer.BadParameter(f"--backbone {backbone!r}: use unet or flow")
    if scenario is not None and backbone != "unet":
        raise typer.BadParameter("give a scenario or --backbone, not both: the scenario's "
                                 "model.pretrained says the backbone")
    summary = run_demo(scenario or SCENARIOS[backbone], overrides or [], console)
    print(json.dumps(summary))


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="a run folder (what `train` printed first)")],
    merged: Annotated[Path | None, typer.Option(
        help="also write a whole diffusers pipeline with the LoRA fused, and a model card, here"
    )] = None,
    snapshot: Annotated[int | None, typer.Option(
        help="export the snapshot of this learner step (adapter/snapshots/) instead of the final "
        "adapter"
    )] = None,
    out: Annotated[Path | None, typer.Option(
        help="folder for the adapter files (default RUN_DIR/adapter; for a snapshot "
        "RUN_DIR/export/step_NNNNNN)"
    )] = None,
    base: Annotated[str | None, typer.Option(
        help="base model for --merged (default: the run's; a hub id or a diffusers folder)"
    )] = None,
) -> None:
    """Write the run's adapter in diffusers' LoRA format (pipe.load_lora_weights(DIR)) and peft's
    (adapter_config.json + adapter_model.safetensors); with --merged, a fused pipeline too."""
    from critic_unlearn.export import ExportError, export_run

    try:
        summary = export_run(run_dir, snapshot=snapshot, out=out, merged=merged, base=base)
    except ExportError as e:
        raise UserError(str(e)) from None
    print(json.dumps(summary))


def _mount_subcommands() -> None:
    from critic_unlearn.evaluation.attacks.cli import attack_command
    from critic_unlearn.evaluation.cli import eval_command
    from critic_unlearn.toyworld.cli import app as toyworld_app

    app.command("eval")(eval_command)
    app.command("attack")(attack_command)
    app.add_typer(toyworld_app, name="toyworld")


_mount_subcommands()


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
