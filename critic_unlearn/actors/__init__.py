"""The actor: pull weights if newer, sample a batch of trajectories, score, write. Pure of Ray."""
