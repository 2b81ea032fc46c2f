"""Where a run's workers live: `train(cfg)` runs the loop on the runtime `runtime.kind` names.

`local` (local.py): the learner and one actor in this process; it imports no Ray. `ray`
(driver.py): the learner and the actors as Ray actors, placed and restarted by the driver and
supervisor.py, weights broadcast through the object store (weights.py), the cluster started or
joined with first-contact checks (cluster.py). Both drive the same run loop (training/loop.py)
through the same workers (critic_unlearn/workers/); actor_worker.py and learner_worker.py add
what Ray needs to them. The only package that imports ray, and only in the modules of the Ray
runtime: `train_ray` is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from critic_unlearn.runtime.errors import ActorFailed, RuntimeFailure

if TYPE_CHECKING:
    from rich.console import Console

    from critic_unlearn.config import RunConfig
    from critic_unlearn.training.setup import TrainResult


def train(cfg: RunConfig, console: Console | None = None) -> TrainResult:
    """Unlearn: run `cfg` to learner.max_steps in this process (`runtime.kind = local`) or on a
    Ray cluster (`ray`). Raises `RuntimeFailure` with a message for people when the run cannot
    start or go on."""
    if cfg.runtime.kind == "ray":
        from critic_unlearn.runtime.driver import train_ray

        return train_ray(cfg, console)
    from critic_unlearn.runtime.local import train_local

    return train_local(cfg, console)


def __getattr__(name: str) -> Any:  # PEP 562: each runtime's entry point, imported on first use
    if name == "train_ray":
        from critic_unlearn.runtime.driver import train_ray

        return train_ray
    if name == "train_local":
        from critic_unlearn.runtime.local import train_local

        return train_local
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ActorFailed", "RuntimeFailure", "train", "train_local", "train_ray"]
