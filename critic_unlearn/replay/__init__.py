"""Redis replay buffer: actors `ReplayWriter.write(traj)`, the learner `ReplaySampler.sample(n)`.

Everything else (keys, Lua scripts, connection retries, the rate limiter) is an implementation
detail behind these two classes; `RedisServer` starts a private server for tests and demos.
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
from critic_unlearn.replay.store import RecordMeta
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
]
