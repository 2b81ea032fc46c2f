"""Where a run's replay data lives in Redis: one key prefix per (namespace, shard).

Every key of shard `s` of namespace `ns` starts with `rb:{ns:s}:`. The braces are a Redis
Cluster hash tag, so all keys one Lua script touches sit in one hash slot. A namespace may not
contain `:` or glob characters, so `rb:{ns:*` matches exactly one run's keys (see `clear()`).

    rb:{ns:s}:slot:<i>   payload bytes of ring slot i (a safetensors trajectory blob)
    rb:{ns:s}:meta:<i>   hash: id, uid, version, reward, role, actor, times_sampled, priority, bytes
    rb:{ns:s}:ver        zset slot -> policy version (the staleness index; its size is the size)
    rb:{ns:s}:prio       zset slot -> priority (prioritised sampling)
    rb:{ns:s}:uid        hash writer uid -> slot (makes a retried insert a no-op)
    rb:{ns:s}:stage:<u>  a payload on its way into a slot (inside one MULTI; 10 min TTL)
    rb:{ns:s}:head       insert counter; record id = its value after INCR, slot = (id-1) mod C
    rb:{ns:s}:stats      hash: evictions, corrupt, bytes_in, max_priority
    rb:{ns:s}:rl         hash: rate-limiter inserts, samples (used on shard 0 only)

The durable copy of the latest adapter (`weights.WeightStore`) lives beside them on replay.url:

    w:{ns}:blob          the latest weights blob
    w:{ns}:manifest      hash: version, checksum, base_model, lora_config_hash, bytes
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAMESPACE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


def check_namespace(namespace: str | None) -> str:
    """Return a namespace safe to embed in keys and SCAN patterns, or explain what is wrong."""
    if not namespace:
        raise ValueError(
            "replay.namespace is not set: pass the run name so runs sharing a server stay apart"
        )
    if not _NAMESPACE.match(namespace):
        raise ValueError(
            f"replay.namespace = {namespace!r} is not allowed: use 1-100 of A-Z a-z 0-9 _ . - "
            "(no ':' or glob characters, which would leak into other runs' keys)"
        )
    return namespace


@dataclass(frozen=True)
class Keys:
    """Key names of one shard of one namespace."""

    namespace: str
    shard: int

    @property
    def prefix(self) -> str:
        return f"rb:{{{self.namespace}:{self.shard}}}:"

    @property
    def pattern(self) -> str:
        """SCAN pattern for every key of this shard (and only this shard)."""
        return f"{self.prefix}*"

    def slot(self, i: int) -> str:
        return f"{self.prefix}slot:{i}"

    def meta(self, i: int) -> str:
        return f"{self.prefix}meta:{i}"

    def stage(self, uid: str) -> str:
        return f"{self.prefix}stage:{uid}"

    @property
    def ver(self) -> str:
        return f"{self.prefix}ver"

    @property
    def prio(self) -> str:
        return f"{self.prefix}prio"

    @property
    def uid(self) -> str:
        return f"{self.prefix}uid"

    @property
    def head(self) -> str:
        return f"{self.prefix}head"

    @property
    def stats(self) -> str:
        return f"{self.prefix}stats"

    @property
    def rl(self) -> str:
        return f"{self.prefix}rl"


@dataclass(frozen=True)
class WeightKeys:
    """Key names of one namespace's durable adapter copy."""

    namespace: str

    @property
    def blob(self) -> str:
        return f"w:{{{self.namespace}}}:blob"

    @property
    def manifest(self) -> str:
        return f"w:{{{self.namespace}}}:manifest"
