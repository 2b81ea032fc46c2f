"""`learner.num_workers` learner actors as one data-parallel group.

Each worker is a `RayLearnerWorker` holding rank r (Ray places it with `runtime.learner_cpus`
CPUs and `learner.gpus` GPUs). With more than one, rank 0 names its node's address and a free
port and every rank joins torch.distributed's default group there (learner/distributed.py:
gloo on CPUs, NCCL on GPUs), as Ray Train's TorchConfig forms its group. Every call goes to
every rank (the ranks meet in collectives inside it); rank 0's answer is the group's.

Why not RLlib's LearnerGroup (ray/rllib/core/learner/learner_group.py, read for 2.60): it drives
RLlib `Learner` subclasses built from an `AlgorithmConfig` and an `RLModule` spec, and updates
from RLlib episodes or `MultiAgentBatch`es that it splits itself; our learner's batch comes
from the Redis replay, drawn by each rank, and its state (LoRA, critic, tracker, RNG streams)
goes into our own checkpoint format. The part we would use, forming a torch process group
across Ray actors, is what this file does in its twenty lines.
"""

from __future__ import annotations

from typing import Any

import ray

from critic_unlearn.config import RunConfig
from critic_unlearn.runtime.learner_worker import RayLearnerWorker


class LearnerGroup:
    def __init__(self, cfg: RunConfig, namespace: str, critic_init: Any = None) -> None:
        n = cfg.learner.num_workers
        cls = ray.remote(RayLearnerWorker).options(
            num_cpus=cfg.runtime.learner_cpus, num_gpus=cfg.learner.gpus, max_restarts=0,
            enable_task_events=cfg.runtime.task_events,
        )
        self.workers = [cls.remote(cfg, namespace, critic_init=critic_init, rank=r)
                        for r in range(n)]
        self.joined: list[Any] = []  # the join calls: their failure is a learner failure
        if n > 1:
            address, port = ray.get(self.workers[0].group_address.remote())
            self.joined = [w.join_group.remote(address, port, n) for w in self.workers]

    def __len__(self) -> int:
        return len(self.workers)

    def call(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """`method` on every rank, in rank order: the refs of the calls."""
        return [getattr(w, method).remote(*args, **kwargs) for w in self.workers]

    def lead(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """`method` on rank 0 only (what needs no other rank: the adapter, replay stats)."""
        return getattr(self.workers[0], method).remote(*args, **kwargs)

    def kill(self) -> None:
        for w in self.workers:
            ray.kill(w, no_restart=True)
