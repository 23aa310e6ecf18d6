"""`imagedb db start`, `db stop`, `db status` and `db service`: the embedded server as a service that stays up
(added to the `db` group)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from imagedb import config
from imagedb.cli.operators import embedded_home, replication_lines
from imagedb.cli.support import Command


@click.command(cls=Command, access="none")
@click.pass_context
def start(ctx: click.Context) -> None:
    """Start the embedded PostgreSQL server, on its `db listen` address too; if it runs already, nothing.

    It then runs until `imagedb db stop` or a reboot; `imagedb db service` starts it at every boot.
    """
    from imagedb.pg.cluster import postmaster
    from imagedb.pg.embedded import embedded_url, running_url

    home = embedded_home(ctx, "start")
    was_running = postmaster(home / "pgdata") is not None
    embedded_url(home)
    found = running_url(home)
    if found is None:  # stopped again at once, by someone else
        raise click.ClickException(f"the embedded server in {home / 'pgdata'} stopped right after starting")
    click.echo(f"{'already running' if was_running else 'started'}: {_where(home, found[0])}")


@click.command(cls=Command, access="none")
@click.pass_context
def stop(ctx: click.Context) -> None:
    """Stop the embedded PostgreSQL server (`imagedb db start`, or any command that needs it, starts it again)."""
    from imagedb.pg.embedded import stop_embedded

    stopped = stop_embedded(embedded_home(ctx, "stop"))
    click.echo("embedded server stopped" if stopped else "embedded server was not running")


@click.command(cls=Command, access="none")
@click.pass_context
def status(ctx: click.Context) -> None:
    """Say whether the database runs and accepts connections, where it listens, and its primary or replicas.

    Exit code 0 when it accepts connections, 1 when not (for scripts). It starts nothing. With an external server
    (IMAGEDB_DATABASE_URL), whether it is reachable.
    """
    external = config.database_url(ctx.obj["database_url"])
    if external:
        lines, up = _external_status(external)
    else:
        lines, up = _embedded_status(config.home(ctx.obj["home"]))
    for line in lines:
        click.echo(line)
    ctx.exit(0 if up else 1)


@click.command(cls=Command, access="none")
@click.option("--user", "user_unit", is_flag=True, help="A unit of your own systemd user manager (the default).")
@click.option("--system", "system_unit", is_flag=True, help="A unit of the system's, run as the home's owner.")
@click.option("--install", is_flag=True, help="Write it where systemd reads it and print the commands to enable it.")
@click.option("--name", default="imagedb", show_default=True, help="The unit's name (NAME.service): one per home.")
@click.pass_context
def service(ctx: click.Context, user_unit: bool, system_unit: bool, install: bool, name: str) -> None:
    """Print a systemd unit that starts the embedded server at boot (`imagedb db start`) and stops it at shutdown.

    \b
    The unit names this home (IMAGEDB_HOME) and this installation's imagedb by absolute path. --install writes
    it to ~/.config/systemd/user/ (--user) or /etc/systemd/system/ (--system); imagedb never runs systemctl.
    A user's units start at boot, and keep running after logout, once `loginctl enable-linger` allows it.
    """
    from imagedb.pg.service import install as write_unit
    from imagedb.pg.service import unit

    if user_unit and system_unit:  # one unit for one manager: the last flag winning would hide a typo
        raise click.UsageError("--user and --system cannot be used together: choose one")
    made = unit(embedded_home(ctx, "service"), "system" if system_unit else "user", name)
    if not install:
        click.echo(made.text, nl=False)
        return
    click.echo(f"wrote {write_unit(made)}; enable it with:")
    for command in made.enable_commands():
        click.echo(f"  {command}")


def _where(home: Path, info: Any) -> str:
    from imagedb.pg.listen import running_listen

    listen = running_listen(home / "pgdata", info)[0]
    tcp = f"TCP {listen}" if listen else "no TCP"
    return f"embedded server in {home / 'pgdata'}, socket {info.socket_dir} (port {info.port or 5432}), {tcp}"


def _embedded_status(home: Path) -> tuple[list[str], bool]:
    from imagedb.errors import DatabaseUnavailable
    from imagedb.pg.embedded import running_url
    from imagedb.pg.listen import load_listen

    pgdata = home / "pgdata"
    found = running_url(home)
    if found is None:
        configured = load_listen(home)
        made = (pgdata / "PG_VERSION").exists()
        return [
            f"stopped: the embedded server in {pgdata} is not running (`imagedb db start` starts it)"
            if made
            else f"stopped: no embedded server in {home} yet (`imagedb db start` makes and starts one)",
            f"tcp: {configured} once started" if configured else "tcp: off (Unix socket only)",
        ], False
    info, url = found
    try:
        version, roles = _server_lines(url)
    except DatabaseUnavailable as exc:  # starting up, shutting down, or its password file gone
        return [f"running (pid {info.pid}) but not accepting connections: {exc}"], False
    return [f"running: PostgreSQL {version}, pid {info.pid}, {_where(home, info)}", *roles], True


def _external_status(url: str) -> tuple[list[str], bool]:
    from psycopg.conninfo import conninfo_to_dict

    from imagedb.errors import DatabaseUnavailable

    params = conninfo_to_dict(url)
    where = f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}/{params.get('dbname') or ''}"
    try:
        version, roles = _server_lines(url)
    except DatabaseUnavailable as exc:
        return [f"unreachable: the server at {where} (IMAGEDB_DATABASE_URL): {exc}"], False
    return [f"reachable: PostgreSQL {version} at {where} (IMAGEDB_DATABASE_URL)", *roles], True


def _server_lines(url: str) -> tuple[str, list[str]]:
    """The server's version, and its replication as `db info` shows it (as any role: nothing here needs more
    than a login)."""
    from imagedb.pg.connection import connect, in_recovery

    with connect(url) as conn:
        version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        lines = replication_lines(conn)
        if not in_recovery(conn):
            count = sum(line.startswith("replica ") for line in lines)
            lines.insert(0, f"primary: {count} replica(s)" if count else "primary: no replicas")
    return version, lines
