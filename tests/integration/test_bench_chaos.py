"""bench.stress.chaos --quick, the CI version of the chaos run: an actor SIGKILLed at step 4, a
learner rank at step 9 (a step past its checkpoint; two data-parallel learner workers, so the
whole group goes back to the checkpoint), Redis crashed at step 16, on the Ray runtime with 2
toy-world actors. The run must reach its budget with whole checkpoints and exact books. (A
single learner's restart is tested in test_runtime_local.py.)"""

from __future__ import annotations

import pytest

from bench.stress.chaos import main as chaos


@pytest.mark.slow
def test_quick_chaos_run_survives_every_fault(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    s = chaos(["--quick", "--learner-workers", "2", "--out", str(tmp_path)])
    assert (s["actor_kills"], s["learner_kills"], s["redis_restarts"]) == (1, 1, 1)
    assert s["runs_lost"] == 0 and s["faults_survived"] == 3
    assert s["half_checkpoints"] == 0
    assert s["accounting_ok"], s
    assert s["corrupt"] == 0 and s["duplicated_seeds"] == 0
    assert s["learner_steps_redone"] == 1  # killed one step past the checkpoint at an even step
