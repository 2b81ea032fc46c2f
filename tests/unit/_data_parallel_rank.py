"""One rank of the data-parallel equivalence test (test_learner_data_parallel.py), as a process:
builds the learner on the tiny model, steps on its share of each fixed global batch, and writes
its LoRA, critic and optimiser state (the checkpoint format, no pickle).

python -m tests.unit._data_parallel_rank MODEL CLIP OUT RANK WORLD PORT [no-average]
"""

from __future__ import annotations

import sys

import torch

from critic_unlearn.learner.checkpoint import save_checkpoint
from critic_unlearn.learner.distributed import DataParallel, form_group, leave_group
from critic_unlearn.rewards.normalization import PerPromptStatTracker
from critic_unlearn.rewards.openclip_loading import load_open_clip
from critic_unlearn.types import Batch
from tests.unit.test_learner import make_learner, make_trajectories

OVERRIDES = [  # one minibatch, every transition and every state trained: picks are all rows
    "learner.batch_size=4", "learner.minibatch_size=4", "learner.train_steps=4",
    "critic.train_states=4", "sampler.num_steps=4",
]


def main(model: str, clip_dir: str, out: str, rank: int, world: int, port: int,
         average: bool = True) -> None:
    torch.set_num_threads(1)
    clip = load_open_clip(clip_dir)
    tracker = PerPromptStatTracker(buffer_size=16, min_count=2)
    learner, cfg, comps = make_learner(model, clip, OVERRIDES, tracker=tracker)
    if world > 1:
        group = form_group("127.0.0.1", port, rank, world, "gloo", timeout_s=300)
        if not average:  # the fault the test must catch: ranks step on their own gradients
            DataParallel.average_gradients = lambda self, params: None  # type: ignore[method-assign]
        learner.join(group)
    initial = {k: v.clone() for k, v in learner.weights().state_dict.items()}
    metrics = []
    for seed in (0, 100):
        trajs = make_trajectories(comps, cfg, seed=seed)
        share = len(trajs) // world
        metrics.append(learner.step(Batch.from_trajectories(trajs[rank * share:(rank + 1)
                                                                  * share])))
    state = learner.state_dict()
    state.pop("rng")  # each rank draws its own picks
    state["metrics"] = metrics
    state["initial_adapter"] = initial
    if rank == 0:
        save_checkpoint(out, state)
    leave_group()


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], int(a[3]), int(a[4]), int(a[5]), average=len(a) < 7)
