"""Connect to a Ray cluster (runtime.ray_address or RAY_ADDRESS, as under `ray job submit`) or
start a local one; only a cluster started here is shut down here."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import ray

from critic_unlearn.config import RunConfig
from critic_unlearn.runtime.errors import RuntimeFailure

log = logging.getLogger(__name__)


@contextlib.contextmanager
def ray_cluster(cfg: RunConfig) -> Iterator[None]:
    if ray.is_initialized():  # the caller (a test, a notebook) owns the connection
        yield
        return
    address = cfg.runtime.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(
            num_cpus=cfg.runtime.ray_num_cpus,
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            log_to_driver=True,
        )
    try:
        yield
    finally:
        ray.shutdown()


def check_replay_reachable(cfg: RunConfig, auto: bool) -> None:
    """replay.url = auto starts Redis on this node at 127.0.0.1: fine for one node only."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if auto and len(nodes) > 1:
        raise RuntimeFailure(
            f"replay.url = 'auto' starts a private Redis on the driver's node at 127.0.0.1, "
            f"which the other {len(nodes) - 1} node(s) of this cluster cannot reach; set "
            "replay.url to a Redis server every node can reach (redis://host:port/0)"
        )


def quiet_worker_logging() -> None:
    """In a worker: our INFO lines, everyone else's warnings only (open_clip, diffusers and
    transformers narrate every model load at INFO, once per actor)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("critic_unlearn").setLevel(logging.INFO)
