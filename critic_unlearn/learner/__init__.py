"""The learner: per-step advantages, losses, critic and the off-policy update loop."""
