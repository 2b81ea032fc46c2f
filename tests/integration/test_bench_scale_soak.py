"""bench.stress.scale runs end to end on real Ray and Redis and reports what docs/results.md
quotes; bench.stress.soak judges leaks and steadiness as it says (its verdicts on hand-made
series: a real soak takes minutes)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import REPO
from bench.stress.soak import rss_growth, throughput_windows


@pytest.mark.slow
def test_scale_runs_both_shard_counts_and_reports_every_figure() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.stress.scale", "--actors", "1", "--shards", "1,2",
         "--phase-s", "2", "--warmup-s", "0.5", "--batch", "2", "--learner-batch", "2",
         "--min-size", "2", "--rate", "4", "--publish-every-s", "0.5"],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert [(r["shards"], r["actors"]) for r in result["results"]] == [(1, 1), (2, 1)]
    for r in result["results"]:
        assert r["inserts_per_s"] > 0 and r["server_inserts_per_s"] > 0 and r["draws_per_s"] > 0
        assert r["broadcasts"] >= 1 and r["broadcast_p50_ms"] > 0
        assert len(r["redis_cpu_pct"]) == r["shards"]
        for k in ("sample_p50_ms", "sample_service_p50_ms", "keeps_up", "cpu_bound_here"):
            assert k in r
    assert set(result["saturation"]) == {"1", "2"}
    assert result["record_mb"] == pytest.approx(51 * 4 * 64 * 64 * 2 / 1e6, rel=0.01)
    assert result["adapter_mb"] == pytest.approx(3.19, abs=0.01)
    assert "gpus_per_redis_core" in result["projection"]


def test_soak_flags_a_growing_process_and_not_a_flat_or_passing_one() -> None:
    samples = [
        (float(t), {"learner": 1000.0 + 20 * t, "actor0": 900.0 + (t % 3),
                    **({"ray::IDLE": 50.0} if t == 30 else {})})
        for t in range(0, 100, 10)
    ]
    growth = rss_growth(samples, warmup_s=20)
    assert growth["learner"] == pytest.approx(62.5)  # medians 1,600 -> 2,600 MB
    assert abs(growth["actor0"]) < 1
    assert "ray::IDLE" not in growth  # came and went: not judged


def test_soak_throughput_windows_follow_the_cumulative_count() -> None:
    rows = [{"time_s": float(t), "actor/trajectories": 4.0 * t} for t in range(0, 61, 3)]
    rows += [{"time_s": 70.0, "actor/trajectories": 4.0 * 60}]  # stalled for the last 10 s
    windows = throughput_windows(rows, warmup_s=10, window_s=20)
    assert windows == [4.0, 4.0, 2.0]
