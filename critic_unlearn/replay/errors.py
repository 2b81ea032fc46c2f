"""Replay errors, each one line for people: what, where (URL, password redacted), what to do."""

from __future__ import annotations


class ReplayError(RuntimeError):
    """Base class of every replay failure."""


class ReplayConnectionError(ReplayError):
    """The server did not answer at first contact, or was lost for longer than the retry
    deadline after a first success."""


class ReplayAuthError(ReplayError):
    """The server refused the credentials in the URL; retrying would not help."""


class ReplayFullError(ReplayError):
    """Redis is out of memory (maxmemory with noeviction) and refused an insert."""


class ReplayTimeout(ReplayError, TimeoutError):
    """A blocking call (rate limiter, or no fresh enough record) waited its whole timeout."""

    written: tuple[int, ...] = ()  # from ReplayWriter.write_many: indexes of records that went in
