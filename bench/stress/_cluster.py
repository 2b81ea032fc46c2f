"""Private Ray and Redis for benches: a fresh loopback Ray cluster and N redis-servers.

A bench must never join a cluster someone else started (RAY_ADDRESS, Ray's record of the last
`ray start`) nor share a Redis server: its numbers would mix with another job's load, and its
keys with another run's. The auth mode is set before Ray starts, so the cluster and every driver
that talks to it agree (the same choice bench/micro/weight_broadcast.py and
bench/micro/runtime_overhead.py make).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import ray

from critic_unlearn.replay import RedisServer
from critic_unlearn.runtime.cluster import local_cluster_kwargs


def private_ray_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a process that starts its own local cluster (e.g. `critic-unlearn train`
    in a subprocess): auth as the other benches set it, no RAY_ADDRESS to join instead."""
    env = dict(os.environ if base is None else base)
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env.pop("RAY_ADDRESS", None)
    return env


@contextlib.contextmanager
def local_ray(num_cpus: int | None) -> Iterator[None]:
    """A fresh single-node cluster on 127.0.0.1 for this process, shut down afterwards."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(**local_cluster_kwargs(num_cpus), log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def redis_servers(n: int) -> Iterator[list[RedisServer]]:
    """`n` private redis-servers (own port, own data directory), stopped afterwards."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(RedisServer()) for _ in range(n)]
