"""Assembling a run (run directory, models, actor, learner) and the single-process trainer."""
