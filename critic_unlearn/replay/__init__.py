"""Redis replay buffer: actors `ReplayWriter.write_many(batch)`, the learner `ReplaySampler.sample`.

This package is the only code that talks to Redis. Everything else (keys, Lua scripts,
connection retries, the rate limiter's arithmetic) is an implementation detail behind these two
classes: actors ask `ReplayWriter.wait_for_room(n, wait_s)` before sampling a batch, the learner
`ReplaySampler.release_if_all_stale(min_version, batch)` when the staleness bound starves it,
and every limiter decision is made in Lua. `WeightStore` keeps the durable copy of the latest
adapter; `RedisServer` starts a private server for tests and demos.
"""

from critic_unlearn.replay.errors import (
    ReplayAuthError,
    ReplayConnectionError,
    ReplayError,
    ReplayFullError,
    ReplayTimeout,
)
from critic_unlearn.replay.rate_limiter import RateLimiter
from critic_unlearn.replay.sampler import ReplaySampler, SampledRecord
from critic_unlearn.replay.server import RedisServer
from critic_unlearn.replay.shards import check_reachable
from critic_unlearn.replay.store import RecordMeta, StaleRelease
from critic_unlearn.replay.weights import WeightStore, decode_packet, encode_packet
from critic_unlearn.replay.writer import RecordRef, ReplayWriter

__all__ = [
    "RateLimiter",
    "RecordMeta",
    "RecordRef",
    "RedisServer",
    "ReplayAuthError",
    "ReplayConnectionError",
    "ReplayError",
    "ReplayFullError",
    "ReplaySampler",
    "ReplayTimeout",
    "ReplayWriter",
    "SampledRecord",
    "StaleRelease",
    "WeightStore",
    "check_reachable",
    "decode_packet",
    "encode_packet",
]
