"""The learner as a Ray actor: `workers.learner.LearnerWorker` with what Ray adds.

Publishing goes through `RayPublisher`: one `ray.put` and one Redis write per version; the
reference comes back to the driver in the step's report. The pretrained critic arrives as bytes:
the driver's `critic.init` path names a file on the driver's node (its `.cache/critics`), which a
learner on another node does not have, so the driver sends the file itself.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ray

from critic_unlearn.config import RunConfig
from critic_unlearn.learner.distributed import free_port
from critic_unlearn.runtime.cluster import quiet_worker_logging
from critic_unlearn.runtime.weights import RayPublisher
from critic_unlearn.workers.learner import LearnerWorker


class RayLearnerWorker(LearnerWorker):
    def __init__(self, cfg: RunConfig, namespace: str, critic_init: bytes | None = None,
                 rank: int = 0) -> None:
        """`critic_init`: the bytes of the pretrained critic the driver resolved `critic.init`
        to; the learner reads them from a temporary file while it is built. `rank`: this
        worker's place in a data-parallel group (learner.num_workers)."""
        quiet_worker_logging()
        if critic_init is None:
            super().__init__(cfg, namespace, RayPublisher, rank)
            return
        with tempfile.TemporaryDirectory(prefix="critic-init-") as folder:
            local = Path(folder) / Path(cfg.critic.init or "critic.safetensors").name
            local.write_bytes(critic_init)
            critic = cfg.critic.model_copy(update={"init": str(local)})
            super().__init__(cfg.model_copy(update={"critic": critic}), namespace, RayPublisher,
                             rank)

    def group_address(self) -> tuple[str, int]:
        """Where the group meets: this node's address and a port free on it (rank 0's)."""
        address = ray.util.get_node_ip_address()
        return address, free_port(address)
