"""Evaluation of an unlearning run: UA and IRA from an independent judge, CLIP score, grids.

`evaluate_run(run_dir, cfg, adapter_state=None)` samples the base and the unlearned model on the
same held-out seeds and held-out templates and writes eval.json, eval.md and grids/.

Both names are imported on first use: the CLI mounts `evaluation.cli` for every command, and
`--help` need not import the models (torch, diffusers, peft, open_clip) for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from critic_unlearn.evaluation.judging import EvaluationError
    from critic_unlearn.evaluation.run import evaluate_run


def __getattr__(name: str) -> Any:  # PEP 562: the package's names, imported on first use
    if name == "EvaluationError":
        from critic_unlearn.evaluation.judging import EvaluationError

        return EvaluationError
    if name == "evaluate_run":
        from critic_unlearn.evaluation.run import evaluate_run

        return evaluate_run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EvaluationError", "evaluate_run"]
