"""`critic-unlearn toyworld ...`: build the toy world (mounted by critic_unlearn/cli.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="Build and inspect the embedded toy world.")

DEFAULT_OUT = Path(".cache/toyworld")
DEFAULT_FLOW_OUT = Path(".cache/toyworld-flow")


@app.command()
def build(
    out: Annotated[Path, typer.Option(help="folder to write the world to")] = DEFAULT_OUT,
    reduced: Annotated[
        bool, typer.Option("--reduced", help="tiny models, a few steps: proves the path in seconds")
    ] = False,
    threads: Annotated[int, typer.Option(help="torch threads (1 is fastest on a shared box)")] = 1,
    backbone: Annotated[str, typer.Option(
        help="unet: the world (data, judge, reward CLIP, VAE, text encoder, UNet); flow: an "
        "SD3-class MMDiT trained by flow matching beside the installed UNet world")] = "unet",
) -> None:
    """Train the toy world's pipeline, reward CLIP and judge; check the gates; write the card.

    Exits with status 1 when a quality gate of a full build fails (the world is still written).
    """
    from critic_unlearn.toyworld import ENV_VAR, FLOW_ENV_VAR, world_dir

    if backbone not in ("unet", "flow"):
        raise typer.BadParameter(f"--backbone {backbone!r}: use unet or flow")
    if backbone == "flow":
        from critic_unlearn.toyworld.flow import FlowConfig, build_flow_world

        cfg = FlowConfig.reduced() if reduced else FlowConfig()
        out = DEFAULT_FLOW_OUT if out == DEFAULT_OUT else out
        card = build_flow_world(out, world_dir(), cfg, threads=threads)
        env = FLOW_ENV_VAR
    else:
        from critic_unlearn.toyworld.build import build_world
        from critic_unlearn.toyworld.build_config import BuildConfig

        cfg = BuildConfig.reduced() if reduced else BuildConfig.full()
        card = build_world(out, cfg, threads=threads)
        env = ENV_VAR
    print(json.dumps({
        "out": str(out),
        "gates_passed": card["gates_passed"],
        "wall_s": card["wall_s"]["total"],
        "size_bytes": card["size_bytes"],
        "use_it": f"export {env}={out.resolve()}",
    }))
    if not card["gates_passed"] and not reduced:
        sys.exit(1)


@app.command()
def info() -> None:
    """Print where the toy world is and its quality gates."""
    from critic_unlearn.toyworld import world_dir

    root = world_dir()
    card = json.loads((root / "model_card.json").read_text())
    print(json.dumps({"world": str(root), "gates_passed": card["gates_passed"],
                      "gates": {k: round(v["value"], 4) for k, v in card["gates"].items()},
                      "build_wall_s": card["wall_s"]["total"]}, indent=2))
