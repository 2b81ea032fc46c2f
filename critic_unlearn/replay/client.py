"""Connections to Redis from a URL, with retries that end in one clear error.

redis-py's own retries are switched off: every call goes through `Connection.call`. First contact
(the ping when a `Connection` is made) is not retried: a server that nothing answers for at start
is a wrong `replay.url` or a server not started, and `ReplayConnectionError` says so at once.
After a first success, connection failures (and a server still loading its data after a restart)
are retried with exponential back-off and full jitter until `retry_deadline_s`, then raise
`ReplayConnectionError` naming the URL with its password redacted. Wrong credentials fail at once
(`ReplayAuthError`), and so does an ACL user refused a command or key (NOPERM): the error names
the user, the refusal and the ACL SETUSER line that grants what a run needs (`acl.py`). A failed
TLS handshake says which replay.tls_* setting to fix. A refused write because Redis is full raises
`ReplayFullError`.

`connect(cfg, url)` makes a Connection from a ReplayConfig: password (replay.password_env), TLS
files for rediss:// URLs (replay.tls_ca_file, tls_cert_file, tls_key_file) and, given the needs
of a shard or of the weight store, a check of the user's grants at connect.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from critic_unlearn.config import ReplayConfig
from critic_unlearn.replay import acl
from critic_unlearn.replay.errors import (
    ReplayAuthError,
    ReplayConnectionError,
    ReplayError,
    ReplayFullError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_TLS_FIELDS = {"tls_ca_file": "ssl_ca_certs", "tls_cert_file": "ssl_certfile",
               "tls_key_file": "ssl_keyfile"}
_LUA_DENIED = ("The user executing the script can't", "no permissions to")
_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
_URL_HELP = (
    "use redis://[user:password@]host:port/db, rediss://... for TLS, or unix:///path/redis.sock"
)
CONNECT_TIMEOUT_S = 5.0  # seconds one TCP connect may take (a host that drops packets)


def redact(url: str) -> str:
    """The URL with its password replaced by ***, safe for logs and error messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:
        return "<unparsable URL>"


def env_password(name: str | None) -> str | None:
    """The password in environment variable `name` (replay.password_env); None when unset."""
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        raise ValueError(
            f"replay.password_env = {name!r} names an environment variable that is empty or not "
            f"set on {socket.gethostname()}; set it on every node (e.g. from a Kubernetes "
            "Secret), or put the password in replay.url"
        )
    return value


def tls_options(cfg: ReplayConfig, url: str) -> dict[str, str]:
    """redis-py's ssl_* arguments from replay.tls_*; an error names a missing file, or a TLS
    file set for a URL that is not rediss://."""
    given = {f: getattr(cfg, f) for f in _TLS_FIELDS if getattr(cfg, f) is not None}
    if not given:
        return {}
    if not url.startswith("rediss://"):
        raise ValueError(
            f"replay.{next(iter(given))} is set but the URL {redact(url)!r} is not TLS; use "
            "rediss://host:port/db for every replay URL, or unset replay.tls_*"
        )
    if ("tls_cert_file" in given) != ("tls_key_file" in given):
        raise ValueError(
            "replay.tls_cert_file and replay.tls_key_file go together (a client certificate "
            "and its key, for servers with tls-auth-clients); set both or neither"
        )
    for field, path in given.items():
        if not Path(path).is_file():
            raise ValueError(
                f"replay.{field} = '{path}' is not a file on {socket.gethostname()}; put the "
                "PEM file there (on every node) or fix the path"
            )
    return {_TLS_FIELDS[f]: str(p) for f, p in given.items()}


def connect(cfg: ReplayConfig, url: str, *, namespace: str | None = None,
            needs: list[acl.Need] | None = None) -> Connection:
    """A Connection to `url` with the run's password and TLS files; with `needs` (acl.py), the
    ACL user's grants are checked now, so a missing one fails here, all of them in one error."""
    conn = Connection(
        url,
        socket_timeout_s=cfg.socket_timeout_s,
        retry_deadline_s=cfg.retry_deadline_s,
        password=env_password(cfg.password_env),
        tls=tls_options(cfg, url),
        namespace=namespace,
    )
    if needs:
        try:
            conn.check_grants(needs)
        except BaseException:
            conn.close()
            raise
    return conn


class Connection:
    """One Redis server: a redis-py client plus the retry policy around every call.

    `password` is used when the URL carries none (the URL's own wins, as in redis-py); `tls`
    holds redis-py's ssl_* arguments (`tls_options`); `namespace` only makes ACL errors exact."""

    def __init__(
        self,
        url: str,
        *,
        socket_timeout_s: float,
        retry_deadline_s: float,
        password: str | None = None,
        tls: dict[str, str] | None = None,
        namespace: str | None = None,
    ) -> None:
        self.url = url
        self.safe_url = redact(url)
        self.retry_deadline_s = retry_deadline_s
        self.namespace = namespace
        self.reached = False  # a call has succeeded: from then on, connection loss is retried
        try:
            self.user = unquote(urlsplit(url).username or "") or "default"
            self.redis = redis.Redis.from_url(
                url,
                password=password,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=min(socket_timeout_s, retry_deadline_s, CONNECT_TIMEOUT_S),
                retry=Retry(NoBackoff(), 0),
                **(tls or {}),
            )
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"replay.url = {self.safe_url!r} is not a Redis URL ({e}); {_URL_HELP}"
            ) from None
        self.call(self.redis.ping, "PING")
        self._warn_eviction_policy()

    def check_grants(self, needs: list[acl.Need]) -> None:
        """ReplayAuthError naming every command and key the user may not use (acl.py); nothing
        on a server too old to say (before Redis 7)."""
        missing = self.call(lambda: acl.denied(self.redis, needs), "the ACL check")
        if missing:
            raise ReplayAuthError(
                f"Redis at {self.safe_url}: ACL user {self.user!r} may not run what a run needs "
                f"({'; '.join(missing)}); {self._grant_hint()}"
            )

    def _grant_hint(self) -> str:
        ns = self.namespace or "NAMESPACE"
        where = "" if self.namespace else " (NAMESPACE: replay.namespace, else the run name)"
        return (
            f"as an admin, grant them: ACL SETUSER {self.user} {acl.acl_rules(ns)}{where}, "
            "or put a user that has them in replay.url"
        )

    def call(self, fn: Callable[[], T], what: str = "") -> T:
        """Run `fn` (one Redis round trip), retrying connection loss until the deadline once a
        call has succeeded; before that, an unreachable server fails at once."""
        start = time.monotonic()
        attempt = 0
        while True:
            try:
                result = fn()
                self.reached = True
                return result
            except redis.AuthenticationError as e:
                raise ReplayAuthError(
                    f"Redis at {self.safe_url} refused the credentials ({e}); fix the user and "
                    "password in replay.url (redis://user:password@host:port/db)"
                ) from None
            except redis.ResponseError as e:
                raise self._response_error(e, what) from None
            except _TRANSIENT as e:
                if not self.reached and _is_tls_failure(e):
                    raise ReplayConnectionError(
                        f"TLS handshake with Redis at {self.safe_url} failed ({e}); set "
                        "replay.tls_ca_file to the CA that signed the server's certificate (and "
                        "replay.tls_cert_file / tls_key_file if it asks for a client "
                        "certificate), or use redis:// for a server without TLS"
                    ) from None
                if not self.reached and not isinstance(e, redis.BusyLoadingError):
                    raise ReplayConnectionError(
                        f"cannot reach Redis at replay.url = {self.safe_url!r} "
                        f"({type(e).__name__}: {e}); start the server there or fix replay.url "
                        "(retries with back-off are only for a server that was reached and "
                        "then lost, up to replay.retry_deadline_s)"
                    ) from None
                attempt += 1
                elapsed = time.monotonic() - start
                if elapsed >= self.retry_deadline_s:
                    raise ReplayConnectionError(
                        f"cannot reach Redis at {self.safe_url} after {attempt} attempts in "
                        f"{elapsed:.1f} s ({type(e).__name__}: {e}); start the server or fix "
                        "replay.url, or raise replay.retry_deadline_s"
                    ) from None
                delay = min(2.0, 0.02 * 2 ** min(attempt, 10)) * random.random()
                delay = min(delay, max(0.0, self.retry_deadline_s - elapsed))
                log.warning("replay: %s lost (%s); retry %d in %.2f s", self.safe_url, e, attempt,
                            delay)
                time.sleep(delay)

    def _response_error(self, e: redis.ResponseError, what: str) -> ReplayError:
        text = str(e)
        if isinstance(e, redis.exceptions.NoPermissionError) or any(d in text for d in _LUA_DENIED):
            return ReplayAuthError(
                f"Redis at {self.safe_url} refused {what or 'a command'} to ACL user "
                f"{self.user!r}: NOPERM {text.split(' script: ')[0]}; {self._grant_hint()}"
            )
        if "NOAUTH" in text or "WRONGPASS" in text:
            return ReplayAuthError(
                f"Redis at {self.safe_url} needs other credentials ({text}); put the ACL user "
                "and password in replay.url (redis://user:password@host:port/db)"
            )
        if isinstance(e, redis.exceptions.OutOfMemoryError) or "> 'maxmemory'" in text:
            return ReplayFullError(
                f"Redis at {self.safe_url} is out of memory and refused {what or 'a write'}; "
                "nothing was stored. Lower replay.capacity or raise the server's maxmemory "
                "(the buffer's ring, not Redis eviction, must bound memory)"
            )
        return ReplayError(f"Redis at {self.safe_url} failed {what or 'a command'}: {text}")

    def _warn_eviction_policy(self) -> None:
        """Eviction would silently drop index keys; say so once (managed Redis may hide CONFIG)."""
        try:
            policy = self.redis.config_get("maxmemory-policy").get(b"maxmemory-policy", b"")
        except redis.RedisError:
            return
        if policy and policy != b"noeviction":
            log.warning(
                "replay: Redis at %s has maxmemory-policy %s; set it to noeviction so a full "
                "server refuses inserts instead of silently dropping replay index keys",
                self.safe_url,
                policy.decode(),
            )

    def close(self) -> None:
        self.redis.close()


def _is_tls_failure(e: BaseException | None) -> bool:
    """A refused certificate, either side's (redis-py wraps ssl's errors in its own, with the
    ssl error as their context or only in their text)."""
    while e is not None:
        if isinstance(e, ssl.SSLError) or "[SSL" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False
