"""Runtime errors for people: each says what happened and what to do (the CLI prints one line)."""

from __future__ import annotations


class RuntimeFailure(RuntimeError):
    """The run cannot start or go on (bad topology, learner died, an actor kept failing)."""


class ActorFailed(RuntimeFailure):
    """An actor failed more often than actors.max_restarts allows."""
