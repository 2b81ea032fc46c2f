"""Where the learner sends each new adapter version: the `Publisher` protocol.

The learner calls `publish` once per version; the worker that holds it calls `take_new` after
each call, to put the version published meanwhile, if any, into its report (`Published`).
Implementations: `runtime.local.LocalPublisher` (in process: the packet itself),
`runtime.weights.RayPublisher` (the object store and the durable Redis copy),
`adversarial.loop.PoolPublisher` (holds a version until the soft-prompt pool goes with it) and
`RecordingPublisher` below (keeps every packet; the learner's tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from critic_unlearn.types import WeightsPacket


@dataclass(frozen=True)
class Published:
    """One published adapter version, and how long publishing it took.

    `ref` is what the runtime hands to actors: a Ray object reference to the encoded blob, or
    the `WeightsPacket` itself in-process."""

    version: int
    ref: Any
    started: float  # time.time() when publishing began (for publish -> applied latency)
    encode_ms: float = 0.0
    put_ms: float = 0.0  # into the object store
    store_ms: float = 0.0  # the durable copy in Redis


class Publisher(Protocol):
    def publish(self, packet: WeightsPacket) -> None: ...

    def take_new(self) -> Published | None:
        """The version published since the last call, if any (each is handed out once)."""
        ...


class RecordingPublisher:
    """Keeps every packet (`packets`); `take_new` hands out the newest, once."""

    def __init__(self) -> None:
        self.packets: list[WeightsPacket] = []
        self._new: Published | None = None

    def publish(self, packet: WeightsPacket) -> None:
        self.packets.append(packet)
        self._new = Published(packet.version, packet, 0.0)

    def take_new(self) -> Published | None:
        new, self._new = self._new, None
        return new
