"""Exceptions the library raises. Each message is one line that says what happened and what to do next.

Each class says, once, what it means to a caller outside the library: `exit_code` for the CLI (2 is bad usage,
shown with the command's usage line, as click does for its own errors; 1 anything else) and `http_status` for the
API. Both read them from here; the library itself knows neither click nor FastAPI.
"""

from __future__ import annotations

from typing import ClassVar

USAGE = 2  # click's exit code for bad usage


class ImagedbError(Exception):
    """Base class: the CLI prints the message of any of these and exits non-zero, with no traceback."""

    exit_code: ClassVar[int] = 1
    http_status: ClassVar[int] = 400


class DatabaseUnavailable(ImagedbError):
    """The database cannot be reached or started."""

    exit_code = 1
    http_status = 503  # with Retry-After: it may be back in a moment


class SchemaOutOfDate(ImagedbError):
    """The database schema is behind (or ahead of) the code."""

    exit_code = 1
    http_status = 400


class ModelUnavailable(ImagedbError):
    """The embedding model or its weights cannot be loaded."""

    exit_code = 1
    http_status = 503  # the server's setup, not the request: its message is kept from the client


class ModelMismatch(ImagedbError):
    """A collection is used with a model other than the one it was created with."""

    exit_code = USAGE
    http_status = 409


class ConcurrentChange(ImagedbError):
    """Another command changed what this one relied on while it ran (e.g. `models use` during an ingest); what
    was done is kept, and running it again completes it."""

    exit_code = 1  # not bad usage: the same command, run again, is right
    http_status = 409


class LockTimeout(ImagedbError):
    """A lock wait ended (pg/limits.py LOCK_TIMEOUT_S): another session holds what the command needs."""

    exit_code = 1
    http_status = 503


class NotFound(ImagedbError):
    """A collection, image or path that does not exist."""

    exit_code = 1
    http_status = 404


class InvalidInput(ImagedbError):
    """A query, option or value that makes no sense."""

    exit_code = USAGE
    http_status = 400


class ReadOnlyReplica(ImagedbError):
    """A write asked of a read-only replica (a standby): it belongs on the primary."""

    exit_code = 1
    http_status = 400


class NotReady(ImagedbError):
    """A model asked for that is not fully added to a collection yet, or a change another process is making."""

    exit_code = 1
    http_status = 400


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libpq's and the server's run on with hints and context)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
