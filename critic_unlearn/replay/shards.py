"""Open a run's shards from its `ReplayConfig`: shard 0 is `url`, then one per extra URL.

Records of actor `a` live on shard `a mod N`; each shard holds `capacity // N` slots. Shard 0 is
the primary: it holds the rate-limiter counters for all shards.
"""

from __future__ import annotations

from critic_unlearn.config import ReplayConfig
from critic_unlearn.replay.client import Connection, env_password
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
    password = env_password(cfg.password_env)
    shards: list[Shard] = []
    try:
        for i, url in enumerate(urls):
            conn = Connection(
                url,
                socket_timeout_s=cfg.socket_timeout_s,
                retry_deadline_s=cfg.retry_deadline_s,
                password=password,
            )
            shards.append(Shard(conn, Keys(ns, i), cfg.capacity // len(urls)))
    except BaseException:
        for s in shards:
            s.conn.close()
        raise
    return shards


def check_reachable(cfg: ReplayConfig) -> None:
    """Ping replay.url and every replay.shards URL once (first contact is not retried: see
    client.py); ReplayConnectionError / ReplayAuthError name the URL, ValueError the setting."""
    password = env_password(cfg.password_env)
    for url in (cfg.url, *cfg.shards):
        Connection(
            url,
            socket_timeout_s=cfg.socket_timeout_s,
            retry_deadline_s=cfg.retry_deadline_s,
            password=password,
        ).close()


def open_limiter(cfg: ReplayConfig, shards: list[Shard]) -> RateLimiter:
    params = LimiterParams(cfg.samples_per_insert, cfg.min_size_to_sample, cfg.error_buffer)
    return RateLimiter(params, shards[0])
