"""Weight broadcast under Ray: one object-store put per version, plus the durable Redis copy.

The learner encodes each version once (`replay.weights.encode_packet`, a checksummed
safetensors blob), puts the blob in the object store once (`RayPublisher`) and writes the very
same bytes to the durable copy (`replay.WeightStore`, which owns the Redis side); the driver
hands the reference to each actor in one call. A restarted or new actor (or one whose
object-store fetch failed) starts from the durable copy. The adversarial soft-prompt pool that
goes with a version rides in the same blob (`adversarial.packets.fold_pool`).
"""

from __future__ import annotations

import time

import ray

from critic_unlearn.adversarial.packets import fold_pool
from critic_unlearn.learner.publisher import Published
from critic_unlearn.replay.weights import WeightStore, encode_packet
from critic_unlearn.types import WeightsPacket


class RayPublisher:
    """The learner's `Publisher` under Ray: encode once, `ray.put` once, store durably once."""

    def __init__(self, store: WeightStore | None) -> None:
        self.store = store
        self.latest: Published | None = None
        self._fresh = False

    def publish(self, packet: WeightsPacket) -> None:
        started, t0 = time.time(), time.perf_counter()
        blob = encode_packet(fold_pool(packet))
        t1 = time.perf_counter()
        ref = ray.put(blob)
        t2 = time.perf_counter()
        if self.store is not None:
            self.store.put(blob, packet)
        t3 = time.perf_counter()
        self.latest = Published(
            packet.version, ref, started, (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3
        )
        self._fresh = True

    def take_new(self) -> Published | None:
        """The version published since the last call, if any (each is handed out once)."""
        if not self._fresh:
            return None
        self._fresh = False
        return self.latest
