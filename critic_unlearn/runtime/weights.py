"""Weight broadcast: one object-store put per version, plus a durable copy in Redis.

A published adapter travels as one safetensors blob (`codec.encode_state_dict`, with the manifest
as its header and a checksum over everything), so the object store and Redis carry the very same
bytes and every receiver checks them the same way. The learner puts the blob once per version
(`RayPublisher`); the driver hands the reference to each actor in one call. The durable copy
lives under the run namespace,

    w:{<namespace>}:blob       the latest blob
    w:{<namespace>}:manifest   hash: version, checksum, base_model, lora_config_hash, bytes

written together in one MULTI, so a restarted or new actor (or one whose object-store fetch
failed) starts from the latest weights. Nothing read from Redis is unpickled.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import ray

from critic_unlearn.codec import decode_state_dict, encode_state_dict
from critic_unlearn.config import ReplayConfig
from critic_unlearn.replay.client import Connection, env_password
from critic_unlearn.replay.keys import check_namespace
from critic_unlearn.types import WeightsPacket

log = logging.getLogger(__name__)


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
        self.blob_key = f"w:{{{ns}}}:blob"
        self.manifest_key = f"w:{{{ns}}}:manifest"
        self.conn = Connection(
            cfg.url,
            socket_timeout_s=cfg.socket_timeout_s,
            retry_deadline_s=cfg.retry_deadline_s,
            password=env_password(cfg.password_env),
        )

    def put(self, blob: bytes, packet: WeightsPacket) -> None:
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


@dataclass(frozen=True)
class Published:
    """One published version: the object-store reference and when/how long publishing took."""

    version: int
    ref: ray.ObjectRef  # -> bytes, the blob of `encode_packet`
    started: float  # time.time() when publish began (for publish -> applied latency)
    encode_ms: float
    put_ms: float  # ray.put
    store_ms: float  # durable copy to Redis


class RayPublisher:
    """The learner's `Publisher` under Ray: encode once, `ray.put` once, store durably once."""

    def __init__(self, store: WeightStore | None) -> None:
        self.store = store
        self.latest: Published | None = None
        self._fresh = False

    def publish(self, packet: WeightsPacket) -> None:
        started, t0 = time.time(), time.perf_counter()
        blob = encode_packet(packet)
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
