"""The run's balance between actors and learner (training/progress.py): the share of actor time
the rate limiter held them, from what each batch reports."""

from __future__ import annotations

import math

import torch

from critic_unlearn.training.progress import RunStats
from critic_unlearn.training.reports import BatchReport


def report(actor: int, held_s: float, sample_s: float, write_s: float, written: int = 4,
           blocked: bool = False) -> BatchReport:
    return BatchReport(actor, written, written, 0, 0.0, 0, 0, 0.0, sample_s, write_s, blocked,
                       0, torch.zeros(1, dtype=torch.uint8), held_s=held_s)


def test_held_share_counts_limiter_waits_over_all_actor_time():
    stats = RunStats(2, capacity=64, max_steps=10)
    assert math.isnan(stats.actors_held_share())  # nothing known yet: not 0
    stats.on_batch(report(0, held_s=0.0, sample_s=3.0, write_s=1.0))
    stats.on_batch(report(1, held_s=2.0, sample_s=0.0, write_s=0.0, written=0, blocked=True))
    stats.on_batch(report(1, held_s=2.0, sample_s=3.0, write_s=1.0))
    assert stats.actors_held_share() == 4.0 / 12.0
    stats.learner_wait_share = 0.25
    assert stats.metrics()["runtime/actors_held_share"] == 4.0 / 12.0
    assert "actors held 33%, learner waits 25%" in stats.line()
