"""Exceptions the library raises. Each message is one line that says what happened and what to do next."""


class ImagedbError(Exception):
    """Base class: the CLI prints the message of any of these and exits non-zero, with no traceback."""


class DatabaseUnavailable(ImagedbError):
    """The database cannot be reached or started."""


class SchemaOutOfDate(ImagedbError):
    """The database schema is behind (or ahead of) the code."""


class ModelUnavailable(ImagedbError):
    """The embedding model or its weights cannot be loaded."""


class ModelMismatch(ImagedbError):
    """A collection is used with a model other than the one it was created with."""


class ConcurrentChange(ImagedbError):
    """Another command changed what this one relied on while it ran (e.g. `models use` during an ingest); what
    was done is kept, and running it again completes it. Not bad usage: exit code 1, HTTP 409."""


class NotFound(ImagedbError):
    """A collection, image or path that does not exist."""


class InvalidInput(ImagedbError):
    """A query, option or value that makes no sense."""


class ReadOnlyReplica(ImagedbError):
    """A write asked of a read-only replica (a standby): it belongs on the primary."""


class NotReady(ImagedbError):
    """A model asked for that is not fully added to a collection yet, or a change another process is making."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libpq's and the server's run on with hints and context)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
