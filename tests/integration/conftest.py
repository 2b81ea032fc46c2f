"""Real Redis for the replay tests: a private redis-server per session (or REDIS_URL).

Each test gets its own namespace and clears it afterwards, so the suite can also run against an
external server (REDIS_URL=redis://...) without touching anything else on it. Tests that must
kill or reconfigure a server start a private one with `private_server`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest
import torch

from critic_unlearn.config import ReplayConfig
from critic_unlearn.replay.server import RedisServer, find_server_binary
from critic_unlearn.types import SamplerSettings, Trajectory


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    external = os.environ.get("REDIS_URL")
    if external:
        yield external
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def private_server() -> Iterator[Callable[..., RedisServer]]:
    """Factory for servers this test owns (may kill, restart, misconfigure); all stopped after."""
    try:
        find_server_binary()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    started: list[RedisServer] = []

    def start(**kw: object) -> RedisServer:
        server = RedisServer(**kw).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def replay_cfg(redis_url: str) -> Iterator[Callable[..., ReplayConfig]]:
    """Factory of configs on the session server, each call in a fresh namespace, cleared after."""
    made: list[ReplayConfig] = []

    def make(**kw: object) -> ReplayConfig:
        base: dict = dict(
            url=redis_url, namespace=f"t-{uuid.uuid4().hex[:12]}", capacity=16,
            min_size_to_sample=1, samples_per_insert=1.0, error_buffer=1e9, timeout_s=2.0,
            retry_deadline_s=2.0, socket_timeout_s=5.0,
        )
        cfg = ReplayConfig(**{**base, **kw})
        made.append(cfg)
        return cfg

    yield make
    from critic_unlearn.replay import ReplaySampler

    for cfg in made:
        try:
            with ReplaySampler(cfg) as s:
                s.clear()
        except Exception:  # a test may have stopped its server; nothing left to clear there
            pass


def make_trajectory(i: int, *, version: int = 0, actor: int = 0, role: str = "forget",
                    states: int = 3, side: int = 4) -> Trajectory:
    """A small, deterministic trajectory whose prompt_id names it (`traj-<i>`)."""
    g = torch.Generator().manual_seed(i)
    k = states - 1
    return Trajectory(
        prompt_id=f"traj-{i}", prompt=f"a red shape #{i}", role=role,  # type: ignore[arg-type]
        latents=torch.randn(states, 4, side, side, generator=g).half(),
        positions=torch.arange(states), steps=torch.arange(k),
        timesteps=torch.arange(k) * 50, log_probs=torch.randn(k, generator=g),
        reward=float(i) / 10, version=version, actor_id=actor, seed=i,
        sampler=SamplerSettings(num_steps=k, eta=1.0, guidance_scale=5.0),
    )


@pytest.fixture
def make_traj() -> Callable[..., Trajectory]:
    return make_trajectory
