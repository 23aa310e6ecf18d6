"""`imagedb db ...`: the database's URL, state, schema, backups and embedded server."""

from __future__ import annotations

from pathlib import Path

import click

from imagedb import config
from imagedb.cli.operators import (
    embedded_lines,
    listen,
    psql,
    replica,
    replication_lines,
    require_primary_url,
    role_url,
)
from imagedb.cli.server import service, start, status, stop
from imagedb.cli.support import Group, open_store
from imagedb.display import escape
from imagedb.store import DEFAULT_HNSW_EF_CONSTRUCTION, DEFAULT_HNSW_M
from imagedb.store.index import DENSE_HNSW

DEFAULT_RERANK = 400  # candidates re-ranked per search with --quantize binary: at 1M, recall 0.80 against 0.60 at 200
# for about the same latency (bench/results/scale_1000000.json)


@click.group(cls=Group)
def db() -> None:
    """The database: its URL, state, schema and server."""


@db.command(access="none")
@click.option("--role", help="The URL this role (e.g. made by grant-reader) logs in with over TCP, for BI tools.")
@click.option(
    "--password", envvar="IMAGEDB_ROLE_PASSWORD", help="Put this password in the URL [env IMAGEDB_ROLE_PASSWORD]."
)
@click.pass_context
def url(ctx: click.Context, role: str | None, password: str | None) -> None:
    """Print the connection URL (for psql, BI tools, or IMAGEDB_DATABASE_URL).

    With --role: the URL a BI login uses (host, port, database, user), over the TCP address set by
    `imagedb db listen`; the password only if given.
    """
    from imagedb.pg.database import resolve_url

    if role is None:
        click.echo(resolve_url(ctx.obj["database_url"], ctx.obj["home"]))
        return

    click.echo(role_url(ctx, role, password))


@db.command(access="read")
@click.pass_context
def info(ctx: click.Context) -> None:
    """Print server and pgvector versions, schema revision and per-collection counts."""
    from imagedb.cli.tune import info_lines
    from imagedb.pg.limits import role_limit_lines
    from imagedb.pg.migrate import current_revision, head_revision

    with open_store(ctx) as store:
        server, pgvector = store.admin.server_versions()
        revision = current_revision(store.conn)
        stats = store.admin.collection_stats()
        replication = replication_lines(store.conn) + embedded_lines(ctx)
        recall = {s["collection"]: info_lines(store, s["collection"], s["images"]) for s in stats}
        limits = role_limit_lines(store.conn)
    click.echo(f"server: PostgreSQL {server}, pgvector {pgvector}")
    head = head_revision()
    # "revision upgrade" alone read as "needs an upgrade": the revision names are words.
    state = "up to date" if revision == head else f"behind, imagedb needs revision {head}: imagedb db upgrade"
    click.echo(f"schema: {state} (revision {revision})")
    for line in replication + [escape(line) for line in limits]:
        click.echo(line)
    if not stats:
        click.echo("collections: none yet (imagedb ingest PATH)")
    for s in stats:
        model = f"{s['model']}:{s['pretrained']}" if s["pretrained"] else s["model"]
        click.echo(
            f"collection {escape(s['collection'])}: {s['images']} images, {s['embeddings']} embeddings,"
            f" {s['errors']} ingest errors, {s['excluded']} forgotten file(s) left out; model {model} (dim {s['dim']})"
        )
        for line in recall[s["collection"]]:
            click.echo(line)


@db.command(access="none")
@click.pass_context
def upgrade(ctx: click.Context) -> None:
    """Migrate the database schema to the newest revision."""
    from imagedb.pg.database import resolve_url
    from imagedb.pg.migrate import head_revision
    from imagedb.pg.migrate import upgrade as run_upgrade

    url = resolve_url(ctx.obj["database_url"], ctx.obj["home"])
    require_primary_url(ctx, url)
    run_upgrade(url)
    click.echo(f"schema at revision {head_revision()}")


@db.command(access="write")
@click.option(
    "--m",
    "m",
    type=click.IntRange(2, 100),
    help="HNSW links per node [default: 16, or 24 for a model of 250,000 vectors or more].",
)
@click.option(
    "--ef-construction",
    type=click.IntRange(4, 1000),
    help="HNSW build candidate list [default: 64, or 128 from 250,000 vectors; at least 2 * m].",
)
@click.option("--hashes", is_flag=True, help="Instead: compute missing perceptual hashes from stored thumbnails.")
@click.option(
    "--quantize",
    type=click.Choice(["binary", "none"]),
    help="Instead: binary gives every model a binary-quantised index (one bit a dimension) whose candidates are"
    " re-ranked exactly; none removes it.",
)
@click.option(
    "--rerank",
    type=click.IntRange(1, 1000),
    default=DEFAULT_RERANK,
    show_default=True,
    help="With --quantize binary: candidates re-ranked per search.",
)
@click.pass_context
def reindex(
    ctx: click.Context, m: int | None, ef_construction: int | None, hashes: bool, quantize: str | None, rerank: int
) -> None:
    """Rebuild every model's HNSW index with new build parameters, while searches keep using the old one
    (or, with --hashes, backfill hashes; with --quantize, add or remove binary-quantised indexes)."""
    if hashes and quantize:
        raise click.UsageError("--hashes and --quantize are separate jobs: run them one at a time")
    build = [o for o, v in (("--m", m), ("--ef-construction", ef_construction)) if v is not None]
    if build and (hashes or quantize == "none"):  # said rather than ignored: the user meant something by them
        job = "--hashes builds no index" if hashes else "--quantize none only removes the binary indexes"
        raise click.UsageError(f"{job}: {' and '.join(build)} would do nothing")
    if quantize != "binary" and _given(ctx, "rerank"):
        raise click.UsageError("--rerank is for --quantize binary: without it, it would do nothing")
    if hashes:
        from imagedb.dupes import backfill_hashes

        with open_store(ctx) as store:
            click.echo(f"computed {backfill_hashes(store)} perceptual hash(es)")
        return
    if quantize is not None:
        m = m or DEFAULT_HNSW_M  # the binary index is small: the sparser graph's defaults
        ef_construction = ef_construction or max(DEFAULT_HNSW_EF_CONSTRUCTION, 2 * m)
    if m is not None and ef_construction is not None and ef_construction < 2 * m:
        raise click.BadParameter(f"must be at least 2 * m = {2 * m}", param_hint="--ef-construction")
    if quantize is not None:
        assert m is not None and ef_construction is not None
        with open_store(ctx) as store:
            names = store.index.quantize_indexes(rerank if quantize == "binary" else None, m, ef_construction)
        if quantize == "none":
            click.echo("removed the binary-quantised indexes: searches use the halfvec indexes")
        else:
            click.echo(
                f"built {len(names)} binary-quantised index(es) with m={m}, ef_construction={ef_construction};"
                f" searches re-rank {rerank} candidates exactly"
            )
        return
    with open_store(ctx) as store:
        names = store.index.rebuild_indexes(m, ef_construction)
        params = store.index.index_params(names)
    built = ", ".join(f"{name} (m={p.m}, ef_construction={p.ef_construction})" for name, p in params)
    click.echo(
        f"rebuilt {len(names)} index(es): {built or 'none'}"
        " (built concurrently and swapped in: searches used the old index meanwhile)"
    )


def _given(ctx: click.Context, name: str) -> bool:
    """Whether the user gave the option, rather than its default applying."""
    return ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)


@db.command(access="read")
@click.option(
    "--recall",
    is_flag=True,
    help="Also measure the index's recall@10 and latency per ef_search against an exact scan.",
)
@click.option("--collection", "-c", default=config.DEFAULT_COLLECTION, show_default=True, help="With --recall.")
@click.option(
    "--queries",
    default=100,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="With --recall: queries of each kind, image and text (each needs one exact scan).",
)
@click.pass_context
def check(ctx: click.Context, recall: bool, collection: str, queries: int) -> None:
    """Check the stored data: embeddings, thumbnails, hashes, indexes. Exit code 1 when something is wrong.

    With --recall, also measure recall@10 of one collection's index at several ef_search values against an exact
    scan, for image queries (made from stored images) and text queries (the cached query texts when there are
    enough, else text-like probes) apart; the recall at the values searches use is kept for `imagedb db info`.
    """
    from imagedb.pg.limits import settings_problems
    from imagedb.provenance import checkpoint_problems

    unused = [o for o, name in (("-c", "collection"), ("--queries", "queries")) if _given(ctx, name)]
    if unused and not recall:  # said rather than ignored, as reindex does
        raise click.UsageError(f"{' and '.join(unused)} {'are' if len(unused) > 1 else 'is'} for --recall: add it")
    with open_store(ctx) as store:
        problems = store.admin.problems() + checkpoint_problems(store) + settings_problems(store.conn)
        sparse = store.index.sparse_large_indexes()
    if problems:
        raise click.ClickException("; ".join(problems))
    click.echo(
        "ok: every image has its embedding, thumbnail and hash, every index is valid, and every checkpoint whose"
        " SHA-256 is recorded still matches it"
    )
    for name, count, params in sparse:  # advice, not a fault: the exit code stays 0
        click.echo(
            f"note: model {escape(name)} holds {count:,} vectors in an index built with m {params.m}, ef_construction"
            f" {params.ef_construction}; `imagedb db reindex` rebuilds it with m {DENSE_HNSW.m}, ef_construction"
            f" {DENSE_HNSW.ef_construction}, searches going on meanwhile (on 1M vectors recall@10 at ef_search 100"
            " went from 0.855 to 0.968: see docs/benchmarks.md)"
        )
    if recall:
        from imagedb.cli.tune import recall_check_lines

        for line in recall_check_lines(ctx, collection, queries):
            click.echo(line)


@db.command(access="write")
@click.pass_context
def repair(ctx: click.Context) -> None:
    """Remove what `imagedb db check` names for removal: indexes imagedb does not keep (left by an interrupted
    `db reindex` or `--quantize binary`), cached query texts that searches ignore, other roles' right to write
    that cache, and the oversized session defaults a reader or writer set on itself (the limits grant-* gave it stay).

    Indexes go with DROP INDEX CONCURRENTLY: searches and writes go on meanwhile.
    """
    from imagedb.pg.limits import reset_settings

    with open_store(ctx) as store:
        revoked = store.admin.revoke_cache_writers()
        removed = store.leftovers.remove()
        texts = store.admin.remove_untrusted_texts()
        reset = reset_settings(store.conn)
    for role, settings in reset.items():
        click.echo(
            f"removed the session defaults role {escape(role)} set on itself"
            f" ({escape(', '.join(sorted(set(settings))))}); the limits grant-* gave it stay"
        )
    if revoked:
        click.echo(
            f"the text-query cache is the owner's again: revoked writing it from {escape(', '.join(revoked))}"
            " and emptied it (their rows could not be told from the owner's)"
        )
    for leftover in removed:
        click.echo(f"removed index {escape(leftover.describe())}")
    click.echo(f"removed {len(removed)} leftover index(es) and {texts} cached text(s) that searches ignore")


@db.command(access="none")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def dump(ctx: click.Context, file: Path) -> None:
    """Back up the whole database to FILE (pg_dump custom format)."""
    from imagedb.pg.backup import dump as run_dump
    from imagedb.pg.database import resolve_url

    run_dump(resolve_url(ctx.obj["database_url"], ctx.obj["home"]), file)
    click.echo(f"wrote {escape(str(file))} ({file.stat().st_size / 1e6:.1f} MB)")


@db.command(access="none")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def restore(ctx: click.Context, file: Path, yes: bool) -> None:
    """Replace the database's contents by a backup made with `imagedb db dump`."""
    from imagedb.pg.backup import restore as run_restore
    from imagedb.pg.database import resolve_url

    url = resolve_url(ctx.obj["database_url"], ctx.obj["home"])
    require_primary_url(ctx, url)
    if not yes:
        click.confirm("Replace everything in the database by the backup?", abort=True)
    run_restore(url, file)
    click.echo(f"restored {escape(str(file))}")


for command in (start, stop, status, service, listen, psql, replica):
    db.add_command(command)


@db.command(access="write")
@click.option(
    "--shards",
    type=click.IntRange(1, 1024),
    help="Shards of the image tables [default: the coordinator's citus.shard_count, 32 unless set].",
)
@click.pass_context
def distribute(ctx: click.Context, shards: int | None) -> None:
    """Spread the tables over a Citus cluster (IMAGEDB_DATABASE_URL at its coordinator, after `imagedb db upgrade`).

    The image tables are distributed by image id (co-located), the small ones become reference tables on every node
    (docs/scaling.md). Run once; a second run changes nothing.
    """
    with open_store(ctx) as store:
        placements = store.citus.distribute(shards)
    for p in placements:
        click.echo(f"{p.table}: {p.kind}" + (f", {p.shards} shards" if p.kind == "distributed" else ""))
