"""An actor as a Ray actor: `workers.actor.ActorWorker` with pushed versions from the object store.

The worker runs two calls at a time (`max_concurrency=2`): the driver's `run_batch` loop, and
`set_weights`, which fetches and checks a pushed version (an object-store reference, one call
per version) while a batch is being sampled, and hands it to `ActorWorker.offer`. A fetch that
fails or a blob that does not decode falls back to the durable Redis copy.
"""

from __future__ import annotations

import logging
import time

import ray

from critic_unlearn.adversarial.packets import unfold_pool
from critic_unlearn.codec import CodecError
from critic_unlearn.config import RunConfig
from critic_unlearn.replay import decode_packet
from critic_unlearn.runtime.cluster import quiet_worker_logging
from critic_unlearn.workers.actor import ActorFactory, ActorWorker


class RayActorWorker(ActorWorker):
    def __init__(
        self, cfg: RunConfig, actor_id: int, namespace: str, factory: ActorFactory | None = None
    ) -> None:
        quiet_worker_logging()
        super().__init__(cfg, actor_id, namespace, factory)

    def start(self, state: dict | None = None, weights: list | None = None) -> dict:
        """Restore seeds/rng and load weights: the pushed reference if given, else the durable
        copy in Redis. Also says which node the actor runs on."""
        self.restore(state)
        if not (weights and self.set_weights(weights)["applied"]):
            with self.model_lock:
                self._pull_from_store()
        return {**self.started(), "node": ray.util.get_node_ip_address()}

    def set_weights(self, refs: list, reset: bool = False) -> dict:
        """Fetch and check the pushed blob `refs[0]`, then `offer` it (None when the fetch
        failed: the Redis copy is tried instead). `reset` as in `offer`."""
        t0 = time.perf_counter()
        t1 = t0
        try:
            blob = ray.get(refs[0], timeout=self.cfg.actors.weight_fetch_timeout_s)
            t1 = time.perf_counter()
            packet = unfold_pool(decode_packet(blob))  # the soft-prompt pool, if any, apart
            self.last_weights = time.monotonic()
        except (ray.exceptions.RayError, CodecError) as e:
            self.fetch_failures += 1
            self._say(
                logging.WARNING,
                "weights fetch from the object store failed (%s: %s); "
                "keeping v%d, trying the Redis copy",
                type(e).__name__,
                e,
                self.actor.version,
            )
            packet = None
        t2 = time.perf_counter()
        applied = self.offer(packet, reset)
        t3 = time.perf_counter()
        return {
            **self._where(),
            "applied": applied,
            "received": packet is not None,
            "time": time.time(),
            "fetch_ms": (t1 - t0) * 1e3,  # ray.get of the blob
            "decode_ms": (t2 - t1) * 1e3,  # safetensors + codec checksum
            "apply_ms": (t3 - t2) * 1e3,  # manifest checks (checksum again) + load into LoRA
        }
