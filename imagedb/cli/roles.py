"""`imagedb grant-reader` and `grant-writer`: logins for BI tools and ingest jobs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from imagedb.cli.support import Command
from imagedb.cli.support import open_store as _store
from imagedb.display import escape
from imagedb.pg.limits import (
    MAX_CONNECTIONS,
    MAX_TEMP_FILE_MB,
    MAX_TIMEOUT_S,
    READER_LIMITS,
    WRITER_LIMITS,
)


def _role_options(kind: str, defaults: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--password or --generate-password, and the limits (docs/security.md says each default and why)."""
    options = [
        click.option(
            "--password",
            envvar="IMAGEDB_ROLE_PASSWORD",
            help="Set the role's password: at least 12 characters, not mostly the role's name, a common word or a"
            " keyboard or digit run (docs/security.md)"
            " [env IMAGEDB_ROLE_PASSWORD].",
        ),
        click.option(
            "--generate-password", is_flag=True, help="Set a random password of 22 characters and print it once."
        ),
        click.option(
            "--statement-timeout",
            type=click.IntRange(0, MAX_TIMEOUT_S),
            help=f"Seconds a statement of this role may run, 0 for no limit [default for a {kind}:"
            f" {defaults.statement_timeout_s}].",
        ),
        click.option(
            "--idle-timeout",
            type=click.IntRange(0, MAX_TIMEOUT_S),
            help="Seconds this role's session may sit idle inside a transaction (holding its locks) before the"
            f" server ends it, 0 for no limit [default: {defaults.idle_in_transaction_s}].",
        ),
        click.option(
            "--connection-limit",
            type=click.IntRange(-1, MAX_CONNECTIONS),
            help=f"Connections this role may hold at once, -1 for no limit [default: {defaults.connection_limit}].",
        ),
        click.option(
            "--temp-file-limit",
            type=click.IntRange(-1, MAX_TEMP_FILE_MB),
            help="MB of temporary files (sorts, hashes) one session of this role may write, -1 for no limit"
            f" [default: {defaults.temp_file_limit_mb}].",
        ),
    ]

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def _grant(ctx: click.Context, role: str, kind: str, options: dict[str, Any]) -> Any:
    from imagedb import roles

    password, generate = options.pop("password"), options.pop("generate_password")
    if generate and password is not None:
        raise click.UsageError("give --password (or IMAGEDB_ROLE_PASSWORD) or --generate-password, not both")
    if generate:
        password = roles.generate_password()
    limits = (READER_LIMITS if kind == "reader" else WRITER_LIMITS).adjusted(
        statement_timeout_s=options["statement_timeout"],
        idle_in_transaction_s=options["idle_timeout"],
        connection_limit=options["connection_limit"],
        temp_file_limit_mb=options["temp_file_limit"],
    )
    run = roles.grant_reader if kind == "reader" else roles.grant_writer
    with _store(ctx) as store:
        grant = run(store, role, password, limits)
    return grant, password if generate else None


def _report(role: str, grant: Any, generated: str | None) -> None:
    limits = grant.limits
    click.echo(
        f"limits: statements {limits.statement_timeout_s or 'unlimited'} s, idle in a transaction"
        f" {limits.idle_in_transaction_s or 'unlimited'} s, {limits.connection_limit} connections,"
        f" {limits.temp_file_limit_mb} MB of temporary files; no large objects or temporary tables"
    )
    if grant.unset:
        click.echo(f"note: this server's imagedb role may not set {', '.join(grant.unset)}: see docs/security.md",
                   err=True)  # fmt: skip
    if generated is not None:
        click.echo(f"password (shown once, store it now): {generated}")
    elif not grant.can_log_in:
        click.echo(
            f"note: {escape(role)} has no password, so it cannot log in: set one with --password or"
            " --generate-password",
            err=True,
        )


@click.command("grant-reader", cls=Command, access="write")
@click.argument("role")
@_role_options("reader", READER_LIMITS)
@click.pass_context
def grant_reader(ctx: click.Context, role: str, **options: Any) -> None:
    """Let ROLE (created if missing) read the BI views and search in SQL: no vectors, thumbnails, EXIF or GPS."""
    from imagedb.roles import READER_FUNCTIONS, READER_VIEWS

    grant, generated = _grant(ctx, role, "reader", options)
    searches = ", ".join(f.split("(")[0] for f in READER_FUNCTIONS)
    click.echo(
        f"{'created' if grant.created else 'updated'} role {escape(role)}: SELECT on {', '.join(READER_VIEWS)};"
        f" EXECUTE on {searches}"
    )
    _report(role, grant, generated)


@click.command("grant-writer", cls=Command, access="write")
@click.argument("role")
@_role_options("writer", WRITER_LIMITS)
@click.pass_context
def grant_writer(ctx: click.Context, role: str, **options: Any) -> None:
    """Let ROLE (created if missing) ingest, tag, search and find duplicates in existing collections."""
    grant, generated = _grant(ctx, role, "writer", options)
    done = "created" if grant.created else "updated"
    if grant.promoted:
        done = "made"
    click.echo(
        f"{done} role {escape(role)}{' (a reader or plain role until now) a writer' if grant.promoted else ''}:"
        " read and write imagedb's tables"
    )
    _report(role, grant, generated)
