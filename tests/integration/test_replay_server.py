"""A run's private Redis dies with the process that started it, even when that one is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

CHILD = """
import sys, time
from critic_unlearn.replay import RedisServer
s = RedisServer(die_with_parent=True).start()
print(s.proc.pid, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_private_server_exits_when_its_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(parent.stdout.readline())
        assert alive(server_pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(server_pid)
    finally:
        if parent.poll() is None:
            parent.kill()


def test_free_port_stays_out_of_the_ranges_others_draw_from():
    """Ports below Linux's ephemeral range and above Ray's worker ports, never repeated, bindable:
    a port the OS had handed to someone's client socket once kept a GCS from answering."""
    import socket

    from critic_unlearn.replay.server import free_port

    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(20000 <= p < 32768 for p in ports)
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", ports[-1]))  # still free after the call: the caller can bind it
        taken.listen()
    finally:
        taken.close()
