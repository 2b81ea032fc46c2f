"""Runtime errors for people: each says what happened and what to do (the CLI prints one line)."""

from __future__ import annotations

from critic_unlearn.training.errors import RunFailure

RuntimeFailure = RunFailure  # the runtime's name for it (the CLI and tests catch this)


class ActorFailed(RunFailure):
    """An actor failed more often than actors.max_restarts allows."""
