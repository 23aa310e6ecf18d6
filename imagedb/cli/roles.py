"""`imagedb grant-reader` and `grant-writer`: logins for BI tools and ingest jobs."""

from __future__ import annotations

import click

from imagedb.cli.support import Command
from imagedb.cli.support import open_store as _store
from imagedb.display import escape

_password_option = click.option(
    "--password", envvar="IMAGEDB_ROLE_PASSWORD", help="Set the role's password [env IMAGEDB_ROLE_PASSWORD]."
)


@click.command("grant-reader", cls=Command, access="write")
@click.argument("role")
@_password_option
@click.pass_context
def grant_reader(ctx: click.Context, role: str, password: str | None) -> None:
    """Let ROLE (created if missing) read the BI views and search in SQL: no vectors, thumbnails, EXIF or GPS."""
    from imagedb.roles import READER_FUNCTIONS, READER_VIEWS
    from imagedb.roles import grant_reader as run_grant

    with _store(ctx) as store:
        grant = run_grant(store, role, password)
    searches = ", ".join(f.split("(")[0] for f in READER_FUNCTIONS)
    click.echo(
        f"{'created' if grant.created else 'updated'} role {escape(role)}: SELECT on {', '.join(READER_VIEWS)};"
        f" EXECUTE on {searches}"
    )
    _warn_without_password(role, grant.can_log_in)


@click.command("grant-writer", cls=Command, access="write")
@click.argument("role")
@_password_option
@click.pass_context
def grant_writer(ctx: click.Context, role: str, password: str | None) -> None:
    """Let ROLE (created if missing) ingest, tag, search and find duplicates in existing collections."""
    from imagedb.roles import grant_writer as run_grant

    with _store(ctx) as store:
        grant = run_grant(store, role, password)
    click.echo(f"{'created' if grant.created else 'updated'} role {escape(role)}: read and write imagedb's tables")
    _warn_without_password(role, grant.can_log_in)


def _warn_without_password(role: str, can_log_in: bool) -> None:
    if not can_log_in:
        click.echo(f"note: {escape(role)} has no password, so it cannot log in: set one with --password", err=True)
