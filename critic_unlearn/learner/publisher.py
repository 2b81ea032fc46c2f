"""Where the learner sends new adapter weights: an interface with two small implementations.

The Ray runtime supplies its own (object store + durable Redis copy); the local trainer applies
weights to its in-process actor; tests record what was published.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from critic_unlearn.types import WeightsPacket


class Publisher(Protocol):
    def publish(self, packet: WeightsPacket) -> None: ...


class CallbackPublisher:
    """Calls `fn(packet)` for every published version (the in-process actor's `apply_weights`)."""

    def __init__(self, fn: Callable[[WeightsPacket], None]) -> None:
        self.fn = fn

    def publish(self, packet: WeightsPacket) -> None:
        self.fn(packet)


class RecordingPublisher:
    """Keeps every packet; used by tests and by the local trainer's export."""

    def __init__(self) -> None:
        self.packets: list[WeightsPacket] = []

    def publish(self, packet: WeightsPacket) -> None:
        self.packets.append(packet)
