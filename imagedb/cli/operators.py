"""`imagedb db listen`, `db psql` and `db replica`: the embedded server for operators (added to the `db` group)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from imagedb import config
from imagedb.cli.support import Command, Group
from imagedb.display import escape


def embedded_home(ctx: click.Context, what: str) -> Path:
    """The embedded server's home; these commands manage that server, so an external URL is refused."""
    if config.database_url(ctx.obj["database_url"]):
        raise click.UsageError(
            f"`imagedb db {what}` manages the embedded server; this command uses an external one"
            " (IMAGEDB_DATABASE_URL or --database-url): configure that server itself"
        )
    return config.home(ctx.obj["home"])


@click.command(cls=Command, access="none")
@click.argument("address", required=False, metavar="HOST:PORT")
@click.option("--off", is_flag=True, help="Stop listening on TCP: the Unix socket only, as by default.")
# --cert/--key stay for a server built with TLS, hidden: the bundled PostgreSQL has none, so they can only be refused.
@click.option("--cert", type=click.Path(dir_okay=False, path_type=Path), hidden=True)
@click.option("--key", type=click.Path(dir_okay=False, path_type=Path), hidden=True)
@click.pass_context
def listen(ctx: click.Context, address: str | None, off: bool, cert: Path | None, key: Path | None) -> None:
    """Make the embedded server listen on TCP at HOST:PORT as well (for BI tools), from now on.

    \b
    Every TCP login needs its password; the superuser (postgres) is refused over TCP, so give BI tools a role
    made by `imagedb grant-reader ROLE --password P`. The bundled PostgreSQL is built without TLS, so it listens
    on loopback addresses only (127.0.0.1, ::1): reach it from another machine through an SSH tunnel
    (ssh -L 5433:127.0.0.1:5433 HOST), or use a server of your own with TLS through IMAGEDB_DATABASE_URL.
    Without arguments: show the setting.
    """
    from imagedb.pg.embedded import set_listen
    from imagedb.pg.listen import load_listen, parse_address

    home = embedded_home(ctx, "listen")
    if off and address:
        raise click.UsageError("give HOST:PORT or --off, not both")
    if not off and not address:
        if cert or key:
            set_listen(home, load_listen(home), cert, key)
            click.echo("installed the certificate")
            return
        current = load_listen(home)
        click.echo(f"listening on {current} (TCP) and the Unix socket" if current else "Unix socket only (no TCP)")
        return
    target = None if off else parse_address(address or "")
    set_listen(home, target, cert, key)
    if target is None:
        click.echo("the embedded server listens on its Unix socket only")
        return
    tls = "plain TCP (this machine only)" if target.loopback else "TLS required beyond this machine"
    click.echo(f"the embedded server listens on {target}: passwords required, postgres refused, {tls}")
    click.echo("next: imagedb grant-reader ROLE --password P; imagedb db url --role ROLE", err=True)


def role_url(ctx: click.Context, role: str, password: str | None) -> str:
    """The URL a BI role logs in with: the embedded server's TCP address, or the external URL as that role."""
    from urllib.parse import quote, urlsplit, urlunsplit

    from imagedb.pg.embedded import EMBEDDED_DBNAME
    from imagedb.pg.listen import login_url

    external = config.database_url(ctx.obj["database_url"])
    if not external:
        return login_url(config.home(ctx.obj["home"]), role, password, EMBEDDED_DBNAME)
    parts = urlsplit(external)
    host = parts.netloc.rsplit("@", 1)[-1]
    secret = f":{quote(password, safe='')}" if password else ""
    query = "&".join(p for p in parts.query.split("&") if p and not p.startswith(("passfile=", "password=", "user=")))
    return urlunsplit(parts._replace(netloc=f"{quote(role, safe='')}{secret}@{host}", query=query))


def replication_lines(conn: Any) -> list[str]:
    """For `db info` and `db status`: on a replica, its primary and lag; on a primary, its replicas and theirs.
    True for any role that may log in: what PostgreSQL hides from roles without pg_read_all_stats is said so."""
    from imagedb.pg import standby

    lines = []
    primary = standby.primary_of_standby(conn)
    if primary is not None:
        status = standby.standby_status(conn)
        age = status["replay_age_seconds"]
        lines.append(f"replica of {primary}: receiver {standby.receiver_state(status)}")
        replayed = (
            "no commit replayed since the replica started"
            if age is None
            else f"last replayed commit made {age:.1f} s ago on the primary (grows while it is idle)"
        )
        lines.append(
            f"replication lag: {status['unreplayed_bytes'] or 0} byte(s) received and not yet replayed; {replayed}"
        )
    else:
        try:
            replicas = standby.replicas(conn)
        except Exception:  # noqa: BLE001 - a role without the rights to see replication: nothing to show
            replicas = []
        for r in replicas:
            # A connected replica's state is hidden from roles without pg_read_all_stats; its slot is active.
            state = r["state"] or ("connected (its state needs pg_read_all_stats)" if r["active"] else "not connected")
            lag = f", replay lag {r['replay_lag_seconds']:.3f} s" if r["replay_lag_seconds"] is not None else ""
            lines.append(
                f"replica {r['slot']}: {state}, {r['behind_bytes'] or 0} byte(s) behind{lag}, WAL {r['wal_status']}"
            )
    return lines


def embedded_lines(ctx: click.Context) -> list[str]:
    """For `db info`: the embedded server's TCP address and log (nothing for an external server)."""
    if config.database_url(ctx.obj["database_url"]):
        return []
    from imagedb.pg.listen import load_listen

    home = config.home(ctx.obj["home"])
    address = load_listen(home)
    tcp = f"tcp: {address}" if address else "tcp: off (Unix socket only; `imagedb db listen HOST:PORT`)"
    pgdata = home / "pgdata"
    try:  # written by the log collector while it runs: "stderr log.d/postgresql-Mon.log"
        current = (pgdata / "current_logfiles").read_text().split(maxsplit=1)[1].strip()
    except (OSError, IndexError):
        current = None
    if current:
        log = f"log: {pgdata / current} (the collector's file of today; imagedb's settings keep a week)"
    else:
        log = f"log: {pgdata / 'log'} (one file, not rotated until the server restarts: imagedb db stop)"
    return [tcp, escape(log)]


def require_primary_url(ctx: click.Context, url: str) -> None:
    from imagedb.pg.connection import connect
    from imagedb.pg.replicas import require_primary

    with connect(url) as conn:
        external = config.database_url(ctx.obj["database_url"])
        require_primary(conn, None if external else config.home(ctx.obj["home"]))


@click.command(
    cls=Command,
    access="none",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False, "help_option_names": []},
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def psql(ctx: click.Context, args: tuple[str, ...]) -> None:
    """Open psql (PostgreSQL 18, bundled) on the database, passing ARGS on to it (such as -c "select 1" or --help)."""
    from imagedb.pg.cluster import program as bundled
    from imagedb.pg.database import resolve_url

    url = resolve_url(ctx.obj["database_url"], ctx.obj["home"])
    program = bundled("psql")
    os.execv(program, [program, f"--dbname={url}", *args])  # psql takes over the terminal, and its exit code


@click.group(cls=Group)
def replica() -> None:
    """Read replicas of the embedded server (streaming standbys)."""


@replica.command("create", access="none")
@click.argument("folder", type=click.Path(file_okay=True, path_type=Path))
@click.option(
    "--max-wal",
    default="1GB",
    show_default=True,
    help="Most WAL the primary keeps for a replica that is down; past it that replica must be made again.",
)
@click.pass_context
def replica_create(ctx: click.Context, folder: Path, max_wal: str) -> None:
    """Make a streaming read replica of the embedded server in FOLDER (new or empty) and start it.

    FOLDER is an imagedb home of its own: `imagedb --home FOLDER search ...` reads there; writes are refused.
    """
    from imagedb.pg.replicas import create

    home = embedded_home(ctx, "replica create")
    made = create(home, folder, max_wal=max_wal)
    click.echo(f"replica in {made.home}: {made.receiver or 'not streaming yet'} (slot {made.slot})")
    click.echo(f"read from it: imagedb --home {made.home} search ...", err=True)


@replica.command("remove", access="none")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.pass_context
def replica_remove(ctx: click.Context, folder: Path) -> None:
    """Stop the replica in FOLDER and drop its slot and role on the primary (FOLDER's files stay)."""
    from imagedb.pg.replicas import remove

    home = embedded_home(ctx, "replica remove")
    found = remove(home, folder)
    click.echo(f"replica in {folder} {'removed' if found else 'had no slot or role on this primary; stopped'}")
