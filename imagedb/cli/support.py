"""What every `imagedb` command shares: one-line errors with the right exit code, and the database."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, get_args

import click

from imagedb.display import one_line
from imagedb.errors import USAGE, ImagedbError


@contextmanager
def one_line_errors(ctx: click.Context) -> Iterator[None]:
    """The library's errors as one readable line and a non-zero exit, never a traceback.

    A library error exits with its class's `exit_code`: bad usage (InvalidInput, a --model the collection was not
    made with) with 2 and the usage line of the command that was run; everything else with 1. Control characters
    in any message are escaped, so a file name with a newline cannot split it into two lines.
    """
    try:
        yield
    except click.ClickException as exc:  # click's own messages quote what was typed
        exc.message = one_line(exc.message)
        raise
    except Exception as exc:
        mapped = _mapped(exc, ctx)
        if mapped is None:
            raise
        raise mapped from exc


def _mapped(exc: Exception, ctx: click.Context) -> click.ClickException | None:
    """The one-line click error for a library, database or file error; None for anything else (a bug)."""
    import psycopg  # here, not at the top: `imagedb --help` need not load it

    if isinstance(exc, ImagedbError):
        return click_error(exc, ctx)
    if isinstance(exc, psycopg.Error):  # a full disk, said as such, also when the server died of it
        from imagedb.pg.diskspace import disk_full

        root = ctx.find_root().obj or {}
        if (full := disk_full(exc, root.get("database_url"), root.get("home"))) is not None:
            return click_error(full, ctx)
    if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):  # a write the upfront check did not catch
        return click.ClickException(
            "this database is a read-only replica: run write commands on its primary; the replica follows it"
        )
    if isinstance(exc, psycopg.OperationalError):  # the server went away or refused us mid-command
        return click.ClickException(
            f"database error: {_first_line(exc)}. Data already committed is intact; rerun when the database is back."
        )
    if isinstance(exc, psycopg.Error):
        return click.ClickException(f"database error: {_first_line(exc)}")
    # A file the command reads or writes (permissions, a full disk, a folder). A closed pipe (head, less) is left
    # to click's main, which ends quietly.
    if isinstance(exc, OSError) and exc.errno != errno.EPIPE:
        where = f": {exc.filename}" if exc.filename else ""
        return click.ClickException(one_line(f"{exc.strerror or exc}{where}"))
    return None


def click_error(exc: ImagedbError, ctx: click.Context | None = None) -> click.ClickException:
    """A library error as click shows it, with the exit code its class declares; bad usage with the usage line of
    `ctx`'s command when one is given."""
    message = one_line(str(exc))
    if hasattr(exc, "named"):  # a search field (request.ParamError), named by its option: --min-score
        from imagedb.request import surface_name

        message = one_line(exc.named(lambda name: surface_name(name, "cli")))
    if exc.exit_code == USAGE and ctx is not None:
        return click.UsageError(message, ctx)
    error = click.ClickException(message)
    error.exit_code = exc.exit_code
    return error


# Where a command's database work goes, declared on each command (`@click.command(cls=Command, access="write")`):
# "write": refused on a read-only replica before any work, in one line naming the primary;
# "read": goes to IMAGEDB_READ_DATABASE_URL when it is set (a replica, or a libpq multi-host URL);
# "none": the database of --database-url/--home as it is (or no database at all).
Access = Literal["read", "write", "none"]


class Command(click.Command):
    def __init__(self, *args: Any, access: Access, **kwargs: Any) -> None:
        if access not in get_args(Access):
            raise ValueError(f"access must be one of {get_args(Access)}, not {access!r}")
        super().__init__(*args, **kwargs)
        self.access: Access = access

    def invoke(self, ctx: click.Context) -> Any:
        with one_line_errors(ctx):  # this command's context: its usage line goes with the error
            return super().invoke(ctx)


class Group(click.Group):
    command_class = Command
    group_class = type  # subgroups are Groups too

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.ClickException as exc:  # a bad top-level option: its message quotes what was typed
            exc.message = one_line(exc.message)
            raise

    def invoke(self, ctx: click.Context) -> Any:
        with one_line_errors(ctx):
            return super().invoke(ctx)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Each command's first sentence in full, wrapped: click's default cuts it short with "..."."""
        rows = [
            (name, command.get_short_help_str(limit=1000))
            for name in self.list_commands(ctx)
            if (command := self.get_command(ctx, name)) is not None and not command.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _first_line(exc: Exception) -> str:
    return one_line((str(exc).strip().splitlines() or [type(exc).__name__])[0])


def access_of(command: click.Command) -> Access:
    """The access a command declares; every command of `imagedb` declares one."""
    if not isinstance(command, Command):
        raise TypeError(f"command {command.name!r} declares no access: make it with cls=Command, access=...")
    return command.access


@contextmanager
def open_store(ctx: click.Context) -> Iterator[Any]:
    """The store of the database this command uses: reads may go to a replica, writes must reach a primary."""
    import os

    import psycopg

    from imagedb import config
    from imagedb.pg.database import open_connection
    from imagedb.pg.replicas import require_primary
    from imagedb.store import Store

    root = ctx.find_root()
    access = access_of(ctx.command)
    url = root.obj["database_url"]
    if access == "read" and os.environ.get("IMAGEDB_READ_DATABASE_URL"):
        url = os.environ["IMAGEDB_READ_DATABASE_URL"]  # never migrated: an external URL that is behind is refused
    with Store(open_connection(url, root.obj["home"])) as store:
        if access == "write":
            require_primary(store.conn, None if config.database_url(url) else config.home(root.obj["home"]))
        try:
            yield store
        except psycopg.errors.LockNotAvailable as exc:  # a lock wait timed out: say who holds the lock
            from imagedb.errors import LockTimeout
            from imagedb.pg.limits import blocker_line

            raise LockTimeout(blocker_line(store.conn)) from exc
