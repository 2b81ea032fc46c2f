"""Run docker-compose.yml's services as local processes, the way `docker compose up` would.

The translation is mechanical, so a passing run says the commands in the file are right:

- variables are interpolated as compose does (`${VAR}`, `${VAR:-default}`, `${VAR-default}`,
  `${VAR:+alt}`, `${VAR:?err}`, `$$` -> `$`), from a mapping the caller gives: every `*_HOST`
  variable is 127.0.0.1, every `*_PORT` a free port, RAY_NODE_IP 127.0.0.1, the rest as the caller
  sets them or the file's defaults;
- each named volume is a private folder; its mount path in a service is rewritten to that folder
  in the service's command and environment;
- `image:`, `build:`, `ports:`, `shm_size`, `init` and `deploy:` are container settings with no
  process equivalent and are ignored (the processes listen on loopback directly);
- services start in `depends_on` order; `service_healthy` runs the dependency's own healthcheck
  command until it passes, as compose does;
- every process runs inside a private network namespace (loopback only). Ray replaces a
  127.0.0.1 node address with the machine's outward interface address whenever the machine has
  one; in a namespace with only `lo` it keeps 127.0.0.1, so all traffic stays on loopback.

Every process gets CU_COMPOSE_RUN=<id> in its environment; `stop()` ends the services by PID
(SIGTERM, then SIGKILL) and then any process still carrying that id (Ray's own children).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from critic_unlearn.replay.server import free_port

_VAR = re.compile(
    r"\$(?:(?P<esc>\$)|\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_]\w*))"
)


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose-style interpolation of one string (no nesting, as docker-compose.yml uses)."""

    def sub(m: re.Match) -> str:
        if m["esc"]:
            return "$"
        name = m["name"] or m["bare"]
        op, arg = m["op"], m["arg"] or ""
        value = env.get(name)
        unset_or_empty = not value
        if op in (":-", "-"):
            missing = unset_or_empty if op == ":-" else value is None
            return arg if missing else value
        if op in (":+", "+"):
            present = not unset_or_empty if op == ":+" else value is not None
            return arg if present else ""
        if op in (":?", "?"):
            if unset_or_empty if op == ":?" else value is None:
                raise ValueError(f"compose variable {name} is required: {arg}")
            return value
        return value or ""

    return _VAR.sub(sub, text)


def variables_in(text: str) -> set[str]:
    return {m["name"] or m["bare"] for m in _VAR.finditer(text) if not m["esc"]}


def _walk(node: Any, fn) -> Any:
    if isinstance(node, dict):
        return {k: _walk(v, fn) for k, v in node.items()}
    if isinstance(node, list):
        return [_walk(v, fn) for v in node]
    return fn(node) if isinstance(node, str) else node


def loopback_mapping(compose_text: str, **overrides: str) -> dict[str, str]:
    """The variables for a loopback run: hosts -> 127.0.0.1, ports -> distinct free ports."""
    mapping: dict[str, str] = {}
    for name in sorted(variables_in(compose_text)):
        if name.endswith("_HOST") or name == "RAY_NODE_IP":
            mapping[name] = "127.0.0.1"
        elif name.endswith("_PORT"):
            mapping[name] = str(free_port())  # distinct: free_port never repeats a port
    return {**mapping, **overrides}


def netns_available() -> bool:
    """Can this user make a network namespace (root, or unprivileged user namespaces)?"""
    if not (shutil.which("unshare") and shutil.which("nsenter") and shutil.which("ip")):
        return False
    return subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0


class LocalCompose:
    """docker-compose.yml's services as processes on loopback; see the module docstring."""

    def __init__(
        self,
        compose_file: Path,
        variables: dict[str, str],
        root: Path,
        cwd: Path,
        extra_env: dict[str, str],
    ) -> None:
        raw = yaml.safe_load(compose_file.read_text())
        self.run_id = uuid.uuid4().hex
        self.root, self.cwd = root, cwd
        self.volumes = {name: root / "volumes" / name for name in raw.get("volumes", {})}
        for folder in self.volumes.values():
            folder.mkdir(parents=True, exist_ok=True)
        doc = _walk(raw, lambda s: interpolate(s, variables))
        self.services: dict[str, dict] = {
            name: self._map_volumes(svc) for name, svc in doc["services"].items()
        }
        base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "REDIS_"))}
        self.base_env = {**base, **extra_env, "CU_COMPOSE_RUN": self.run_id}
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.holder: subprocess.Popen | None = None

    # -- translation ----------------------------------------------------------------------------
    def _map_volumes(self, svc: dict) -> dict:
        """Rewrite `name:/path[:ro]` mount paths to the volume's private folder."""
        swaps = []
        for spec in svc.get("volumes", []):
            name, target = spec.split(":")[:2]
            swaps.append(
                (re.compile(rf"(?<![\w/]){re.escape(target)}(?=/|$|\W)"), str(self.volumes[name]))
            )

        def swap(s: str) -> str:
            for pattern, folder in swaps:
                s = pattern.sub(folder, s)
            return s

        return {
            **svc,
            "command": _walk(svc["command"], swap),
            "environment": _walk(svc.get("environment", {}), swap),
        }

    def order(self) -> list[str]:
        """Services in dependency order (compose's `depends_on`)."""
        done: list[str] = []

        def visit(name: str, path: tuple[str, ...]) -> None:
            if name in path:
                raise ValueError(f"depends_on cycle: {' -> '.join((*path, name))}")
            if name not in done:
                for dep in self.services[name].get("depends_on", {}):
                    visit(dep, (*path, name))
                done.append(name)

        for name in self.services:
            visit(name, ())
        return done

    def env_of(self, name: str) -> dict[str, str]:
        env = {
            k: "" if v is None else str(v)
            for k, v in self.services[name].get("environment", {}).items()
        }
        return {**self.base_env, **env}

    # -- processes ------------------------------------------------------------------------------
    def _ns(self, argv: list[str]) -> list[str]:
        assert self.holder is not None, "call open() first"
        return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", "--", *argv]

    def open(self) -> LocalCompose:
        """Make the private network namespace (held by a sleeping process) with `lo` up.

        `unshare` is running once Popen returns, but it may not have called unshare(2) yet: until
        it has, /proc/PID/ns/net is still this process's namespace, and an `ip link set lo up`
        entered through it succeeds on the host's `lo`, leaving the new namespace's `lo` down
        (seen here in 11% of 200 tries on an idle machine). Every service then started in the
        namespace, Ray's head included, could not reach 127.0.0.1, and the test failed after
        the head's whole healthcheck budget (~150 s). So: wait for the namespace to differ from
        ours, then bring `lo` up, then check that it is up there."""
        self.holder = subprocess.Popen(
            ["unshare", "--net", "sleep", "3600"],
            env={**self.base_env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ours = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 10
        detail = "the holder never entered a namespace of its own"
        while time.monotonic() < deadline:
            if self.holder.poll() is not None:
                raise RuntimeError(f"`unshare --net` exited with status {self.holder.returncode}")
            try:
                theirs = os.readlink(f"/proc/{self.holder.pid}/ns/net")
            except OSError:
                theirs = ours
            if theirs != ours:
                up = subprocess.run(
                    self._ns(["ip", "link", "set", "lo", "up"]), capture_output=True
                )
                show = subprocess.run(
                    self._ns(["ip", "-o", "link", "show", "lo"]), capture_output=True
                )
                flags = show.stdout.decode().split("<", 1)[-1].split(">", 1)[0].split(",")
                if up.returncode == 0 and "UP" in flags:
                    return self
                detail = (up.stderr or show.stderr).decode() or f"lo is not up: {flags}"
            time.sleep(0.05)
        raise RuntimeError(f"could not bring up lo in the namespace: {detail}")

    def run(self, argv: list[str], name: str, timeout: float) -> subprocess.CompletedProcess:
        """A one-off command in a service's environment (healthchecks, probes)."""
        return subprocess.run(
            self._ns(argv),
            env=self.env_of(name),
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, name: str) -> subprocess.Popen:
        cmd = self.services[name]["command"]
        argv = cmd if isinstance(cmd, list) else cmd.split()
        log = self.root / f"{name}.log"
        self.logs[name] = log
        with log.open("wb") as out:
            self.procs[name] = subprocess.Popen(
                self._ns(argv),
                env=self.env_of(name),
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self.procs[name]

    def wait_healthy(self, name: str) -> None:
        """Run `name`'s healthcheck as compose would, until it passes or its retries run out."""
        hc = self.services[name]["healthcheck"]
        kind, *rest = hc["test"]
        argv = ["sh", "-c", rest[0]] if kind == "CMD-SHELL" else rest
        interval, timeout = _seconds(hc.get("interval", "30s")), _seconds(hc.get("timeout", "30s"))
        deadline = (
            time.monotonic()
            + _seconds(hc.get("start_period", "0s"))
            + interval * int(hc.get("retries", 3))
        )
        while True:
            self.check_alive(name)
            try:
                if self.run(argv, name, timeout).returncode == 0:
                    return
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} never became healthy; log:\n{self.tail(name)}")
            time.sleep(min(interval, 1.0))

    def wait_dependencies(self, name: str) -> None:
        for dep, spec in self.services[name].get("depends_on", {}).items():
            condition = spec.get("condition", "service_started")
            if condition == "service_healthy":
                self.wait_healthy(dep)
            elif condition == "service_completed_successfully":
                rc = self.procs[dep].wait(timeout=120)
                assert rc == 0, f"{dep} exited {rc}:\n{self.tail(dep)}"
            else:
                self.check_alive(dep)

    def check_alive(self, name: str) -> None:
        rc = self.procs[name].poll()
        if rc is not None:
            raise RuntimeError(f"{name} exited with status {rc}; log:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 60) -> str:
        log = self.logs.get(name)
        text = log.read_text(errors="replace") if log and log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # -- teardown -------------------------------------------------------------------------------
    def stop(self) -> list[int]:
        """End every process this run started, by PID; returns the PIDs that needed SIGKILL."""
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        deadline = time.monotonic() + 10  # Ray's children exit shortly after their parent
        while self.stragglers() and time.monotonic() < deadline:
            time.sleep(0.5)
        killed = []
        for pid in self.stragglers():
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        if self.holder and self.holder.poll() is None:
            self.holder.kill()
            self.holder.wait()
        return killed

    def stragglers(self) -> list[int]:
        """Live processes (not zombies) whose environment carries this run's id."""
        marker = f"CU_COMPOSE_RUN={self.run_id}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker not in (entry / "environ").read_bytes().split(b"\0"):
                    continue
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z" and (self.holder is None or int(entry.name) != self.holder.pid):
                pids.append(int(entry.name))
        return pids

    def __enter__(self) -> LocalCompose:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _seconds(value: str | int | float) -> float:
    """Compose durations: '2s', '1m30s', '500ms', or a number of seconds."""
    if isinstance(value, int | float):
        return float(value)
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|s|m|h)", value):
        total += float(amount) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}[unit]
    return total
