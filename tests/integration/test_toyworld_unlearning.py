"""End to end on the committed toy world: RL unlearning of "red" moves what the judge sees.

The real thing, shortened: the packaged pipeline, reward CLIP and judge; the toy_forget_red
scenario's settings (a critic pretrained first, as `critic.init = auto` does) with fewer learner
steps; the local runtime (the Ray runtime runs the same
objects and has its own tests). Asserts that the forget-prompt reward rises and that the judge's
UA on held-out seeds and templates rises by at least 20 points over the base model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from critic_unlearn.config import load_config
from critic_unlearn.evaluation.run import evaluate_run
from critic_unlearn.runtime.local import train_local
from critic_unlearn.toyworld import ENV_VAR
from critic_unlearn.training.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
STEPS = 40


@pytest.mark.slow
def test_unlearning_red_raises_forget_reward_and_judged_ua(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)  # the committed world
    cfg = load_config(
        ROOT / "configs" / "toy_forget_red.yaml",
        [
            "runtime.kind=local",
            f"runtime.run_dir={tmp_path}",
            f"learner.max_steps={STEPS}",
            f"learner.checkpoint_every={STEPS}",
            "eval.images_per_prompt=8",
            f"critic.cache_dir={tmp_path / 'critics'}",  # pretrains its critic (~30 s), hermetic
        ],
    )
    result = train_local(cfg)
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    forget = [r["actor/forget_reward_mean"] for r in rows]
    quarter = len(forget) // 4
    first, last = sum(forget[:quarter]) / quarter, sum(forget[-quarter:]) / quarter
    assert last > first + 0.02, f"forget reward {first:.3f} -> {last:.3f}"
    init = result.run_dir / "critic_init.json"
    assert init.is_file() and '"cached": false' in init.read_text()
    ev = evaluate_run(result.run_dir, cfg, grids=False)
    assert ev["ua"] >= ev["base_ua"] + 0.20, ev
    assert ev["ira"] >= 0.9 * ev["base_ira"], ev
