"""Evaluation of an unlearning run: UA and IRA from an independent judge, CLIP score, grids.

`evaluate_run(run_dir, cfg, adapter_state=None)` samples the base and the unlearned model on the
same held-out seeds and held-out templates and writes eval.json, eval.md and grids/.
"""

from critic_unlearn.evaluation.judging import EvaluationError
from critic_unlearn.evaluation.run import evaluate_run

__all__ = ["EvaluationError", "evaluate_run"]
