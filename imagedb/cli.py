"""The `imagedb` command: parse options, call one library function, format its result."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from imagedb import config
from imagedb.errors import ImagedbError, InvalidInput


class _Group(click.Group):
    """Turns the library's errors into one readable line and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        import psycopg

        try:
            return super().invoke(ctx)
        except InvalidInput as exc:
            raise click.UsageError(str(exc), ctx) from exc
        except ImagedbError as exc:
            raise click.ClickException(str(exc)) from exc
        except psycopg.OperationalError as exc:  # the server went away or refused us mid-command
            raise click.ClickException(
                f"database error: {_first_line(exc)}. Data already committed is intact;"
                " rerun when the database is back."
            ) from exc
        except psycopg.Error as exc:
            raise click.ClickException(f"database error: {_first_line(exc)}") from exc


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--database-url",
    envvar="IMAGEDB_DATABASE_URL",
    help="PostgreSQL with pgvector to use [env IMAGEDB_DATABASE_URL]. Default: the embedded server.",
)
@click.option(
    "--home",
    envvar="IMAGEDB_HOME",
    type=click.Path(file_okay=False),
    help="Folder of the embedded server's data [env IMAGEDB_HOME].",
)
@click.option("--verbose", "-v", is_flag=True, help="Show the log messages of imagedb and the libraries it uses.")
@click.version_option(package_name="imagedb")
@click.pass_context
def main(ctx: click.Context, database_url: str | None, home: str | None, verbose: bool) -> None:
    """imagedb: search your images by text or by image, in PostgreSQL + pgvector."""
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    else:
        # open_clip and the hub client log each retry and failure; the error the user sees says it in one line.
        logging.disable(logging.ERROR)
    ctx.obj = {"database_url": database_url, "home": home}


@contextmanager
def _store(ctx: click.Context) -> Iterator[Any]:
    from imagedb.db import open_connection
    from imagedb.store import Store

    store = Store(open_connection(ctx.obj["database_url"], ctx.obj["home"]))
    try:
        yield store
    finally:
        store.close()


def _model(value: str | None) -> Any:
    from imagedb.embed import ModelSpec

    spec = config.model_spec(value)
    return ModelSpec.parse(spec) if spec else None


_collection_option = click.option(
    "--collection", "-c", default=config.DEFAULT_COLLECTION, show_default=True, help="Collection to use."
)
_model_option = click.option(
    "--model",
    "-m",
    help="open_clip model as NAME[:PRETRAINED] or NAME:/path/to/checkpoint [env IMAGEDB_MODEL]."
    f" New collections default to {config.DEFAULT_MODEL}; existing ones use their own.",
)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@_collection_option
@_model_option
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096), help="Images per batch.")
@click.option("--keep-gps", is_flag=True, help="Store GPS coordinates from EXIF (off by default, for privacy).")
@click.option(
    "--metadata",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSV or JSON Lines of user attributes, one row per image, keyed by a 'path' or 'filename' column.",
)
@click.pass_context
def ingest(
    ctx: click.Context,
    paths: tuple[str, ...],
    collection: str,
    model: str | None,
    batch_size: int,
    keep_gps: bool,
    metadata: Path | None,
) -> None:
    """Add the images in PATHS (files or folders, recursive) to a collection.

    Unchanged files are skipped, so rerunning is cheap and resumes an interrupted run.
    """
    from tqdm import tqdm

    from imagedb.attributes import read_rows
    from imagedb.images import find_images
    from imagedb.ingest import ingest as run_ingest

    find_images(paths)  # a wrong path or metadata file fails here, before the database or the model is touched
    if metadata:
        read_rows(metadata)
    with _store(ctx) as store, tqdm(unit="img", desc="ingest", disable=None, leave=False) as bar:
        summary = run_ingest(
            store,
            paths,
            collection=collection,
            model=_model(model),
            batch_size=batch_size,
            keep_gps=keep_gps,
            metadata=metadata,
            on_progress=bar.update,
        )
    for path, reason in summary.errors[:20]:
        click.echo(f"failed: {path}: {reason}", err=True)
    if len(summary.errors) > 20:
        click.echo(f"... and {len(summary.errors) - 20} more (see the ingest_errors table)", err=True)
    if metadata:
        click.echo(
            f"metadata: {summary.metadata_matched} row(s) attached, {len(summary.metadata_unmatched)} matched"
            " no image" + "".join(f"\n  unmatched: {key}" for key in summary.metadata_unmatched[:20])
        )
    stored = summary.added + summary.reused
    rate = f" ({stored / summary.seconds:.1f} images/s)" if stored and summary.seconds else ""
    click.echo(
        f"{summary.collection}: added {summary.added}, reused {summary.reused}, skipped {summary.skipped} unchanged,"
        f" failed {summary.failed} in {summary.seconds:.1f} s{rate}"
    )


_DATE = click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"])


@main.command()
@click.argument("query", nargs=-1)
@click.option("--image", "-i", "images", multiple=True, type=click.Path(), help="Add an image file to the query.")
@click.option("--like", "-l", "likes", multiple=True, type=int, help="Add a stored image (by id) to the query.")
@_collection_option
@_model_option
@click.option("--limit", "-k", default=10, show_default=True, type=click.IntRange(1, 1000), help="Results to show.")
@click.option("--offset", default=0, show_default=True, type=click.IntRange(0), help="Skip this many (paging).")
@click.option("--after", type=_DATE, help="Taken (else file time) on or after this date, YYYY-MM-DD[ HH:MM:SS].")
@click.option("--before", type=_DATE, help="Taken (else file time) before this date.")
@click.option("--camera", help="Camera make or model contains this text (any case).")
@click.option("--format", "image_format", help="File format: JPEG, PNG, WEBP, GIF, BMP, TIFF.")
@click.option("--min-width", type=click.IntRange(1), help="At least this many pixels wide.")
@click.option("--min-height", type=click.IntRange(1), help="At least this many pixels high.")
@click.option("--path", "path_glob", help="Path matches this glob (* and ?), e.g. '*/holidays/*'.")
@click.option("--attr", "attrs", multiple=True, metavar="KEY=VALUE", help="User attribute equals value; repeatable.")
@click.option("--min-score", type=click.FloatRange(-1, 1), help="Drop results below this cosine similarity.")
@click.option("--sort", type=click.Choice(["score", "date"]), default="score", show_default=True)
@click.option(
    "--ef-search",
    type=click.IntRange(1, 1000),
    default=config.DEFAULT_EF_SEARCH,
    show_default=True,
    help="HNSW candidate list size: higher is more exact and slower.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--paths", "as_paths", is_flag=True, help="Only the paths, one per line (for piping).")
@click.pass_context
def search(
    ctx: click.Context,
    query: tuple[str, ...],
    images: tuple[str, ...],
    likes: tuple[int, ...],
    collection: str,
    model: str | None,
    limit: int,
    offset: int,
    after: Any,
    before: Any,
    camera: str | None,
    image_format: str | None,
    min_width: int | None,
    min_height: int | None,
    path_glob: str | None,
    attrs: tuple[str, ...],
    min_score: float | None,
    sort: str,
    ef_search: int,
    as_json: bool,
    as_paths: bool,
) -> None:
    """Find the images nearest to QUERY: texts, image paths and id:N, joined by + and -, with W: weights.

    \b
      imagedb search a dog on a beach
      imagedb search beach + sunset - people
      imagedb search 2:"red dress" + ./shoe.jpg --format jpeg --after 2024-01-01
    """
    from imagedb.attributes import parse_pairs
    from imagedb.query import parse
    from imagedb.search import search as run_search
    from imagedb.store import Filters

    tokens = list(query)
    for extra in [*images, *(f"id:{n}" for n in likes)]:
        tokens += ["+", extra] if tokens else [extra]
    terms = parse(tokens)
    filters = Filters(
        after=after,
        before=before,
        camera=camera,
        format=image_format,
        min_width=min_width,
        min_height=min_height,
        path=path_glob,
        attributes=tuple(parse_pairs(list(attrs)).items()),
    )
    with _store(ctx) as store:
        results = run_search(
            store,
            terms,
            collection=collection,
            model=_model(model),
            limit=limit,
            offset=offset,
            ef_search=ef_search,
            filters=filters,
            min_score=min_score,
            sort=sort,  # type: ignore[arg-type]
        )
    if as_paths:
        for r in results:
            click.echo(r.path)
    elif as_json:
        for r in results:
            click.echo(
                json.dumps(
                    {
                        "rank": r.rank,
                        "score": round(r.score, 6),
                        "id": r.image_id,
                        "path": r.path,
                        "date": r.date.isoformat(),
                    }
                )
            )
    elif not results:
        click.echo("no results", err=True)
    else:
        click.echo(f"{'rank':>4}  {'score':>6}  {'id':>8}  {'date':<10}  path")
        for r in results:
            click.echo(f"{r.rank:>4}  {r.score:>6.3f}  {r.image_id:>8}  {r.date:%Y-%m-%d}  {r.path}")


@main.command()
@click.argument("image")
@click.argument("pairs", nargs=-1, required=True, metavar="KEY=VALUE...")
@_collection_option
@click.pass_context
def tag(ctx: click.Context, image: str, pairs: tuple[str, ...], collection: str) -> None:
    """Set user attributes on IMAGE (an id, a path, or a file name)."""
    from imagedb.attributes import parse_pairs
    from imagedb.attributes import tag as run_tag

    attributes = parse_pairs(list(pairs))
    with _store(ctx) as store:
        ids = run_tag(store, collection, image, attributes)
    click.echo(f"tagged {len(ids)} image(s): {', '.join(map(str, ids))}")


@main.command()
@_collection_option
@click.option(
    "--method",
    type=click.Choice(["hash", "clip", "both"]),
    default="hash",
    show_default=True,
    help="Perceptual hash (copies: resized, recompressed, watermarked), CLIP (look-alikes), or both.",
)
@click.option(
    "--max-distance",
    type=click.IntRange(0, 64),
    default=config.DEFAULT_MAX_HASH_DISTANCE,
    show_default=True,
    help="Hash: at most this many of 64 bits differ.",
)
@click.option(
    "--min-similarity",
    type=click.FloatRange(-1, 1),
    default=config.DEFAULT_MIN_CLIP_SIMILARITY,
    show_default=True,
    help="CLIP: at least this cosine similarity.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per group.")
@click.pass_context
def dupes(
    ctx: click.Context, collection: str, method: str, max_distance: int, min_similarity: float, as_json: bool
) -> None:
    """Find groups of duplicate and near-duplicate images (saved in the duplicate_groups table)."""
    from imagedb.dupes import find_duplicates

    with _store(ctx) as store:
        groups = find_duplicates(
            store,
            collection=collection,
            method=method,  # type: ignore[arg-type]
            max_distance=max_distance,
            min_similarity=min_similarity,
        )
    for group in groups:
        if as_json:
            click.echo(json.dumps({"group": group.number, "members": [asdict(m) for m in group.members]}))
            continue
        click.echo(f"group {group.number} ({len(group.members)} images)")
        for m in group.members:
            how = "" if m.matched_image_id is None else f"  {m.rule} {m.distance:g} to {m.matched_image_id}"
            click.echo(f"  {m.image_id:>8}  {m.path}{how}")
    if not as_json:
        images = sum(len(g.members) for g in groups)
        click.echo(f"{len(groups)} group(s), {images} image(s)", err=True)


@main.group()
def watch() -> None:
    """A watch list for copy detection: later ingests record and NOTIFY copies of watched images."""


@watch.command("add")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--label", help="A name for these images, e.g. the rights holder.")
@click.option(
    "--max-distance",
    type=click.IntRange(0, 64),
    default=config.DEFAULT_WATCH_MAX_DISTANCE,
    show_default=True,
    help="At most this many of 64 hash bits may differ.",
)
@click.pass_context
def watch_add(ctx: click.Context, paths: tuple[Path, ...], label: str | None, max_distance: int) -> None:
    """Watch PATHS (image files): copies ingested later, also mirrored or turned, become hits."""
    from imagedb.dupes import add_watches

    with _store(ctx) as store:
        ids = add_watches(store, list(paths), label, max_distance)
    click.echo(f"watching {len(ids)} image(s): {', '.join(map(str, ids))}")


@watch.command("list")
@click.pass_context
def watch_list(ctx: click.Context) -> None:
    """Show the watched images."""
    with _store(ctx) as store:
        rows = store.watches()
    for r in rows:
        click.echo(
            f"{r['id']:>5}  {r['label'] or '-':<16}  max {r['max_distance']:>2}  {r['hits']:>5} hit(s)  {r['path']}"
        )


@watch.command("hits")
@click.option("--watch", "watch_id", type=int, help="Only the hits of this watch id.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def watch_hits(ctx: click.Context, watch_id: int | None, as_json: bool) -> None:
    """Show stored images that look like a watched one."""
    with _store(ctx) as store:
        rows = store.watch_hits(watch_id)
    for r in rows:
        if as_json:
            click.echo(json.dumps({**r, "found_at": r["found_at"].isoformat()}))
        else:
            click.echo(
                f"watch {r['watch_id']} ({r['label'] or '-'}): image {r['image_id']} {r['path']}"
                f"  distance {r['distance']}"
            )


@main.command()
@click.argument("images", nargs=-1, required=True)
@_collection_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--full",
    is_flag=True,
    help="VACUUM FULL: rewrite the tables, so no free space in them keeps the old bytes (locks them meanwhile).",
)
@click.pass_context
def forget(ctx: click.Context, images: tuple[str, ...], collection: str, yes: bool, full: bool) -> None:
    """Delete IMAGES (ids, paths or file names) and everything derived from them: embeddings, hashes,
    thumbnail, duplicate-group and watch-hit rows, ingest errors of their paths; then VACUUM."""
    from imagedb.access import forget as run_forget

    if not yes:
        click.confirm(f"Forget {len(images)} image reference(s) in {collection!r} for good?", abort=True)
    refs = [str(Path(i).expanduser().resolve()) if "/" in i else i for i in images]
    with _store(ctx) as store:
        done = run_forget(store, collection, refs, full=full)
    click.echo(f"forgot {len(done.ids)} image(s): {', '.join(map(str, done.ids))}")
    if done.unvacuumed:
        click.echo(
            f"warning: this role may not VACUUM {', '.join(done.unvacuumed)}: the deleted rows' bytes stay in"
            " those table files until the owner runs `imagedb forget` again or VACUUM",
            err=True,
        )


_password_option = click.option(
    "--password", envvar="IMAGEDB_ROLE_PASSWORD", help="Set the role's password [env IMAGEDB_ROLE_PASSWORD]."
)


@main.command("grant-reader")
@click.argument("role")
@_password_option
@click.pass_context
def grant_reader(ctx: click.Context, role: str, password: str | None) -> None:
    """Let ROLE (created if missing) read the BI views only: no vectors, thumbnails, EXIF or GPS."""
    from imagedb.access import READER_VIEWS
    from imagedb.access import grant_reader as run_grant

    with _store(ctx) as store:
        grant = run_grant(store, role, password)
    click.echo(f"{'created' if grant.created else 'updated'} role {role}: SELECT on {', '.join(READER_VIEWS)}")
    _warn_without_password(role, grant.can_log_in)


@main.command("grant-writer")
@click.argument("role")
@_password_option
@click.pass_context
def grant_writer(ctx: click.Context, role: str, password: str | None) -> None:
    """Let ROLE (created if missing) ingest, tag, search and find duplicates in existing collections."""
    from imagedb.access import grant_writer as run_grant

    with _store(ctx) as store:
        grant = run_grant(store, role, password)
    click.echo(f"{'created' if grant.created else 'updated'} role {role}: read and write imagedb's tables")
    _warn_without_password(role, grant.can_log_in)


def _warn_without_password(role: str, can_log_in: bool) -> None:
    if not can_log_in:
        click.echo(f"note: {role} has no password, so it cannot log in: set one with --password", err=True)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback only by default).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--token",
    envvar="IMAGEDB_API_TOKEN",
    help="Require Authorization: Bearer TOKEN on the API [env IMAGEDB_API_TOKEN].",
)
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, token: str | None) -> None:
    """Serve the web page and the JSON API (OpenAPI schema at /openapi.json)."""
    import uvicorn

    from imagedb.server import create_app

    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        click.echo(f"warning: listening on {host} without --token: anyone who reaches it can search", err=True)
    app = create_app(ctx.obj["database_url"], ctx.obj["home"], token)
    click.echo(f"imagedb on http://{host}:{port}/", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


@main.group()
def db() -> None:
    """The database: its URL, state, schema and server."""


@db.command()
@click.pass_context
def url(ctx: click.Context) -> None:
    """Print the connection URL (for psql, BI tools, or IMAGEDB_DATABASE_URL)."""
    from imagedb.db import resolve_url

    click.echo(resolve_url(ctx.obj["database_url"], ctx.obj["home"]))


@db.command()
@click.pass_context
def info(ctx: click.Context) -> None:
    """Print server and pgvector versions, schema revision and per-collection counts."""
    from imagedb.db import current_revision

    with _store(ctx) as store:
        server, pgvector = store.server_versions()
        revision = current_revision(store.conn)
        stats = store.collection_stats()
    click.echo(f"server: PostgreSQL {server}, pgvector {pgvector}")
    click.echo(f"schema: revision {revision}")
    if not stats:
        click.echo("collections: none yet (imagedb ingest PATH)")
    for s in stats:
        model = f"{s['model']}:{s['pretrained']}" if s["pretrained"] else s["model"]
        click.echo(
            f"collection {s['collection']}: {s['images']} images, {s['embeddings']} embeddings,"
            f" {s['errors']} ingest errors; model {model} (dim {s['dim']})"
        )


@db.command()
@click.pass_context
def upgrade(ctx: click.Context) -> None:
    """Migrate the database schema to the newest revision."""
    from imagedb.db import head_revision, resolve_url
    from imagedb.db import upgrade as run_upgrade

    run_upgrade(resolve_url(ctx.obj["database_url"], ctx.obj["home"]))
    click.echo(f"schema at revision {head_revision()}")


@db.command()
@click.option("--m", "m", default=16, show_default=True, type=click.IntRange(2, 100), help="HNSW links per node.")
@click.option(
    "--ef-construction", default=64, show_default=True, type=click.IntRange(4, 1000), help="HNSW build candidate list."
)
@click.option("--hashes", is_flag=True, help="Instead: compute missing perceptual hashes from stored thumbnails.")
@click.pass_context
def reindex(ctx: click.Context, m: int, ef_construction: int, hashes: bool) -> None:
    """Rebuild every model's HNSW index with new build parameters, while searches keep using the old one
    (or, with --hashes, backfill hashes)."""
    if hashes:
        from imagedb.dupes import backfill_hashes

        with _store(ctx) as store:
            click.echo(f"computed {backfill_hashes(store)} perceptual hash(es)")
        return
    if ef_construction < 2 * m:
        raise click.BadParameter(f"must be at least 2 * m = {2 * m}", param_hint="--ef-construction")
    with _store(ctx) as store:
        names = store.rebuild_indexes(m, ef_construction)
    click.echo(
        f"rebuilt {len(names)} index(es) with m={m}, ef_construction={ef_construction}"
        " (built concurrently and swapped in: searches used the old index meanwhile)"
    )


@db.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Check the stored data: embeddings, thumbnails, hashes, indexes. Exit code 1 when something is wrong."""
    with _store(ctx) as store:
        problems = store.problems()
    if problems:
        raise click.ClickException("; ".join(problems))
    click.echo("ok: every image has its embedding, thumbnail and hash, and every index is valid")


@db.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def dump(ctx: click.Context, file: Path) -> None:
    """Back up the whole database to FILE (pg_dump custom format)."""
    from imagedb.db import dump as run_dump
    from imagedb.db import resolve_url

    run_dump(resolve_url(ctx.obj["database_url"], ctx.obj["home"]), file)
    click.echo(f"wrote {file} ({file.stat().st_size / 1e6:.1f} MB)")


@db.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def restore(ctx: click.Context, file: Path, yes: bool) -> None:
    """Replace the database's contents by a backup made with `imagedb db dump`."""
    from imagedb.db import resolve_url
    from imagedb.db import restore as run_restore

    if not yes:
        click.confirm("Replace everything in the database by the backup?", abort=True)
    run_restore(resolve_url(ctx.obj["database_url"], ctx.obj["home"]), file)
    click.echo(f"restored {file}")


@db.command()
@click.pass_context
def stop(ctx: click.Context) -> None:
    """Stop the embedded PostgreSQL server (it starts again on the next command)."""
    from imagedb.db import stop_embedded

    if config.database_url(ctx.obj["database_url"]):
        raise click.UsageError("`imagedb db stop` stops the embedded server; this command uses an external one")
    stopped = stop_embedded(config.home(ctx.obj["home"]))
    click.echo("embedded server stopped" if stopped else "embedded server was not running")
