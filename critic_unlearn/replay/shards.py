"""Open a run's shards from its `ReplayConfig`: shard 0 is `url`, then one per extra URL.

Records of actor `a` live on shard `a mod N`; each shard holds `capacity // N` slots. Shard 0 is
the primary: it holds the rate-limiter counters for all shards.
"""

from __future__ import annotations

from critic_unlearn.config import ReplayConfig
from critic_unlearn.replay.acl import shard_needs, weight_needs
from critic_unlearn.replay.client import connect
from critic_unlearn.replay.keys import Keys, check_namespace
from critic_unlearn.replay.rate_limiter import LimiterParams, RateLimiter
from critic_unlearn.replay.store import Shard


def open_shards(cfg: ReplayConfig, namespace: str | None = None) -> list[Shard]:
    ns = check_namespace(namespace or cfg.namespace)
    urls = [cfg.url, *cfg.shards]
    if cfg.capacity < len(urls):
        raise ValueError(
            f"replay.capacity = {cfg.capacity} is smaller than the {len(urls)} shards; "
            "give every shard at least one slot"
        )
    shards: list[Shard] = []
    try:
        for i, url in enumerate(urls):
            conn = connect(cfg, url, namespace=ns, needs=shard_needs(ns, i))
            shards.append(Shard(conn, Keys(ns, i), cfg.capacity // len(urls)))
    except BaseException:
        for s in shards:
            s.conn.close()
        raise
    return shards


def check_reachable(cfg: ReplayConfig) -> None:
    """Ping replay.url and every replay.shards URL once (first contact is not retried: see
    client.py); with replay.namespace set, also check the ACL user's grants (acl.py).
    ReplayConnectionError / ReplayAuthError name the URL, ValueError the setting."""
    ns = check_namespace(cfg.namespace) if cfg.namespace else None
    for i, url in enumerate((cfg.url, *cfg.shards)):
        needs = None if ns is None else shard_needs(ns, i) + (weight_needs(ns) if i == 0 else [])
        connect(cfg, url, namespace=ns, needs=needs).close()


def open_limiter(cfg: ReplayConfig, shards: list[Shard]) -> RateLimiter:
    params = LimiterParams(cfg.samples_per_insert, cfg.min_size_to_sample, cfg.error_buffer)
    return RateLimiter(params, shards[0])
