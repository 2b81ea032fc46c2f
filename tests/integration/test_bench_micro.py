"""The microbenchmarks on the tiny model, as `python -m bench.micro.NAME` runs them from the
repository root: each ends with its JSON line, with exactly the keys a bar reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench import REPO

SAMPLER_KEYS = {"ratio", "ours_s", "diffusers_s", "device", "batch", "steps", "model"}
LEARNER_KEYS = {"ratio", "critic_ratio", "critic_off_s", "ours_s", "plain_s",
                "ratio_per_transition", "peak_gib", "device", "batch", "train_steps"}


def run_bench(module: str, *args: str) -> tuple[list[str], dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    return lines, json.loads(lines[-1])


@pytest.mark.slow
def test_sampler_overhead_reports_its_ratio_and_every_run() -> None:
    lines, out = run_bench("bench.micro.sampler_overhead", "--batch", "2", "--steps", "3",
                           "--repeats", "2")
    assert set(out) == SAMPLER_KEYS
    assert out["ours_s"] > 0 and out["diffusers_s"] > 0
    assert out["ratio"] == pytest.approx(out["ours_s"] / out["diffusers_s"], rel=0.01)
    assert (out["model"], out["batch"], out["steps"]) == ("tiny", 2, 3)
    runs = {line.split(":")[0].strip(): line for line in lines if "median" in line}
    assert set(runs) == {"diffusers", "ours"} and all(line.count(",") == 1
                                                      for line in runs.values())


@pytest.mark.slow
def test_learner_step_reports_both_ratios() -> None:
    _, out = run_bench("bench.micro.learner_step", "--batch", "2", "--repeats", "1")
    assert set(out) == LEARNER_KEYS
    assert out["ratio"] == pytest.approx(out["ours_s"] / out["plain_s"], rel=0.01)
    assert out["critic_ratio"] == pytest.approx(out["ours_s"] / out["critic_off_s"], rel=0.01)
    assert out["peak_gib"] is None  # on the CPU: no allocator peak
    assert (out["batch"], out["train_steps"]) == (2, 4)


@pytest.mark.slow
def test_learner_scale_reports_throughput_per_worker_count() -> None:
    lines, out = run_bench("bench.micro.learner_scale", "--batch", "4", "--repeats", "1",
                           "--warmup", "1", "sampler.batch_size=8")
    assert set(out) == {"traj_per_s_1", "traj_per_s_2", "scaling_2", "batch", "device",
                        "repeats"}
    assert out["traj_per_s_1"] > 0 and out["traj_per_s_2"] > 0
    assert out["scaling_2"] == pytest.approx(out["traj_per_s_2"] / out["traj_per_s_1"],
                                             rel=0.01)
    assert sum("Learner.step alone" in line for line in lines) == 2
