"""Run errors for people: each says what happened and what to do (the CLI prints one line)."""

from __future__ import annotations


class RunFailure(RuntimeError):
    """The run cannot start or go on (bad topology, a dead learner, an actor that kept failing,
    a stall). The run loop writes a checkpoint before it reaches the user."""


class LearnerDied(RunFailure):
    """The learner's process died (killed, out of memory, node lost); the run loop restarts it
    from the last checkpoint, up to runtime.learner_max_restarts times."""
