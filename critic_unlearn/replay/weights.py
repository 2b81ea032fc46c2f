"""The durable copy of the latest adapter in Redis, so a new or restarted actor starts from it.

A published adapter travels as one safetensors blob (`codec.encode_state_dict`, with the manifest
as its header and a checksum over everything), so the object store and Redis carry the very same
bytes and every receiver checks them the same way. Blob and manifest (keys in `keys.py`) are
written together in one MULTI. Nothing read from Redis is unpickled. The store lives here, beside
the replay, because only this package talks to Redis.
"""

from __future__ import annotations

from critic_unlearn.codec import decode_state_dict, encode_state_dict
from critic_unlearn.config import ReplayConfig
from critic_unlearn.replay.acl import weight_needs
from critic_unlearn.replay.client import connect
from critic_unlearn.replay.keys import WeightKeys, check_namespace
from critic_unlearn.types import WeightsPacket


def encode_packet(packet: WeightsPacket) -> bytes:
    """The adapter and its manifest as one checksummed safetensors blob."""
    return encode_state_dict(packet.state_dict, {**packet.manifest, "version": str(packet.version)})


def decode_packet(blob: bytes) -> WeightsPacket:
    """Inverse of `encode_packet`; raises CodecError for truncated or tampered bytes."""
    tensors, manifest = decode_state_dict(blob)
    return WeightsPacket(version=int(manifest["version"]), state_dict=tensors, manifest=manifest)


class WeightStore:
    """The durable copy of the latest adapter in Redis (replay.url, the run's namespace)."""

    def __init__(self, cfg: ReplayConfig, namespace: str) -> None:
        ns = check_namespace(namespace)
        keys = WeightKeys(ns)
        self.blob_key = keys.blob
        self.manifest_key = keys.manifest
        self.conn = connect(cfg, cfg.url, namespace=ns, needs=weight_needs(ns))

    def put(self, blob: bytes, packet: WeightsPacket) -> None:
        """Store `blob` (from `encode_packet(packet)`) and its manifest together."""
        manifest = {**packet.manifest, "version": str(packet.version), "bytes": str(len(blob))}
        r = self.conn.redis

        def write() -> list:
            pipe = r.pipeline(transaction=True)
            pipe.set(self.blob_key, blob)
            pipe.delete(self.manifest_key)
            pipe.hset(self.manifest_key, mapping=manifest)
            return pipe.execute()

        self.conn.call(write, "a weights write")

    def latest_version(self) -> int | None:
        """Version of the stored adapter (one small read), None when there is none."""
        raw = self.conn.call(lambda: self.conn.redis.hget(self.manifest_key, "version"))
        return None if raw is None else int(raw)

    def get(self) -> WeightsPacket | None:
        """The stored adapter, checked against its checksum; None when there is none."""
        blob = self.conn.call(lambda: self.conn.redis.get(self.blob_key))
        return None if blob is None else decode_packet(blob)

    def clear(self) -> None:
        """Forget the stored adapter (a fresh run must not hand out an old run's weights)."""
        self.conn.call(lambda: self.conn.redis.delete(self.blob_key, self.manifest_key))

    def close(self) -> None:
        self.conn.close()
