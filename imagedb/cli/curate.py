"""Commands on stored images: tag, dupes, the watch list, forget."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from imagedb import config
from imagedb.cli.options import collection_option
from imagedb.cli.support import Command, Group
from imagedb.cli.support import open_store as _store
from imagedb.display import escape, iso

if TYPE_CHECKING:
    from imagedb.roles import Forgotten


@click.command(cls=Command, access="write")
@click.argument("image")
@click.argument("pairs", nargs=-1, required=True, metavar="KEY=VALUE...")
@collection_option
@click.pass_context
def tag(ctx: click.Context, image: str, pairs: tuple[str, ...], collection: str) -> None:
    """Set user attributes on IMAGE (an id, a path, or a file name)."""
    from imagedb.attributes import tag as run_tag
    from imagedb.request import parse_pairs

    attributes = parse_pairs(list(pairs))
    with _store(ctx) as store:
        ids = run_tag(store, collection, image, attributes)
        paths = store.dupes.paths(ids)
    click.echo(f"tagged {len(ids)} image(s):")
    _echo_images([(i, paths.get(i, "?")) for i in ids])


def _echo_images(images: Sequence[tuple[int, str]], shown: int = 10) -> None:
    """The first `shown` images as `id  path` lines (escaped), then how many more."""
    for image_id, path in images[:shown]:
        click.echo(f"  {image_id:>8}  {escape(path)}")
    if len(images) > shown:
        click.echo(f"  and {len(images) - shown} more")


@click.command(cls=Command, access="write")
@collection_option
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
    """Find groups of duplicate and near-duplicate images (saved in the duplicate_groups table).

    \b
    Each image after a group's first says how it joined (its rule):
      first   the group's first image (smallest id); the others link to it, directly or in a chain
      sha256  the same bytes as the image it links to (always grouped, whatever --method)
      hash    at most --max-distance of its 64 perceptual-hash bits differ from the linked image's
      clip    at least --min-similarity cosine similarity with the linked image's CLIP embedding

    Paths are escaped as in `imagedb search`'s table; --json gives them as they are.
    """
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
            members = [
                {
                    "image_id": m.image_id,
                    "path": m.path,
                    "matched_image_id": m.matched_image_id,
                    "rule": m.rule,
                    "bits": m.bits,
                    "similarity": m.similarity,
                }
                for m in group.members
            ]
            click.echo(json.dumps({"group": group.number, "members": members}))
            continue
        click.echo(f"group {group.number} ({len(group.members)} images)")
        for m in group.members:
            click.echo(f"  {m.image_id:>8}  {escape(m.path)}  {m.describe()}")
    if not as_json:
        images = sum(len(g.members) for g in groups)
        click.echo(f"{len(groups)} group(s), {images} image(s)", err=True)


@click.group(cls=Group)
def watch() -> None:
    """A watch list for copy detection: later ingests record and NOTIFY copies of watched images.

    This watches images, not folders: to keep a collection in step with a folder, use `imagedb ingest --watch`.
    """


@watch.command("add", access="write")
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
    """Watch PATHS (image files): copies already stored, and copies ingested later, also mirrored or turned,
    become hits."""
    from imagedb.dupes import add_watches

    with _store(ctx) as store:
        watched = add_watches(store, list(paths), label, max_distance)
    click.echo(f"watching {len(watched)} image(s):")
    for w in watched:
        click.echo(f"  watch {w.watch_id}: {escape(w.path)}  {w.stored_hits} stored image(s) already look like it")


@watch.command("list", access="read")
@click.pass_context
def watch_list(ctx: click.Context) -> None:
    """Show the watched images."""
    with _store(ctx) as store:
        rows = store.dupes.watches()
    for r in rows:
        click.echo(
            f"{r['id']:>5}  {escape(r['label'] or '-'):<16}  max {r['max_distance']:>2}  {r['hits']:>5} hit(s)"
            f"  {escape(r['path'])}"
        )


@watch.command("hits", access="read")
@click.option("--watch", "watch_id", type=int, help="Only the hits of this watch id.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def watch_hits(ctx: click.Context, watch_id: int | None, as_json: bool) -> None:
    """Show stored images that look like a watched one."""
    with _store(ctx) as store:
        rows = store.dupes.watch_hits(watch_id)
    if not rows and not as_json:
        click.echo("no hits yet", err=True)
    for r in rows:
        if as_json:
            click.echo(json.dumps({**r, "found_at": iso(r["found_at"])}))
        else:
            click.echo(
                f"watch {r['watch_id']} ({escape(r['label'] or '-')}): image {r['image_id']} {escape(r['path'])}"
                f"  distance {r['distance']}"
            )


# "none": LISTEN needs the primary, where ingest raises the notifications (a replica refuses it), whatever
# IMAGEDB_READ_DATABASE_URL says; it writes nothing.
@watch.command("follow", access="none")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option(
    "--seconds", type=click.FloatRange(min=0.1), help="Stop after this many seconds [default: until interrupted]."
)
@click.pass_context
def watch_follow(ctx: click.Context, as_json: bool, seconds: float | None) -> None:
    """Print each new hit as ingests record it (LISTEN imagedb_watch).

    A notification only names a hit's id, and is believed only when watch_hits holds that hit, recorded after this
    command began: any login may send a notification on the channel, a reader's forged one is dropped.
    """
    import time

    from imagedb.watch_feed import WatchFeed

    with _store(ctx) as store:
        feed = WatchFeed(store)
        stop = None if seconds is None else time.monotonic() + seconds
        while stop is None or (left := stop - time.monotonic()) > 0:
            for r in feed.poll(1.0 if stop is None else min(1.0, left)):
                if as_json:
                    click.echo(json.dumps({**r, "found_at": iso(r["found_at"])}))
                else:
                    click.echo(
                        f"watch {r['watch_id']} ({escape(r['label'] or '-')}): image {r['image_id']}"
                        f" {escape(r['path'])}  distance {r['distance']}"
                    )


@click.command(cls=Command, access="write", short_help="Delete images and everything derived from them.")
@click.argument("images", nargs=-1, required=True)
@collection_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--full",
    is_flag=True,
    help="VACUUM FULL: rewrite the tables and their statistics, so no free space in them keeps the old bytes (locks"
    " them meanwhile). With nothing left to match: rewrite again (after a session's older snapshot kept the rows).",
)
@click.option(
    "--content",
    is_flag=True,
    help="Also leave out the same bytes under any other name (keeps their SHA-256 in the forgotten table).",
)
@click.pass_context
def forget(ctx: click.Context, images: tuple[str, ...], collection: str, yes: bool, full: bool, content: bool) -> None:
    """Delete IMAGES (ids, paths or file names) and everything derived from them, then VACUUM.

    That is their embeddings, hashes, thumbnails, duplicate-group and watch-hit rows, and the ingest errors of
    their paths. The images are listed first, then you are asked (unless --yes). Later ingests leave their files
    out (with --content, the same bytes under any name too) until `imagedb unforget`, or `imagedb ingest
    --include-forgotten`.
    """
    from imagedb.collection import find_stored_images
    from imagedb.errors import NotFound
    from imagedb.roles import forget as run_forget
    from imagedb.roles import rewrite

    with _store(ctx) as store:
        try:
            found, missing = find_stored_images(store, collection, images)
        except NotFound:
            if not full:
                raise
            found, missing = [], list(images)
        for ref in missing:
            click.echo(f"not found: {escape(ref)}", err=True)
        if not found:  # --full: a rerun after a session's old snapshot kept deleted rows in the rewritten files
            done = rewrite(store)
            if not done.blocker:  # else the error alone: the rewrite kept the rows an old snapshot sees
                click.echo("nothing to forget; rewrote the tables forget deletes from")
            _report_rewrite(ctx, done)
            return
        click.echo(f"{len(found)} image(s) in collection {escape(collection)}:")
        _echo_images(found)
        if not yes:
            click.confirm("Forget them for good?", abort=True)
        # By path, which names exactly the images listed: a file name could match an image stored meanwhile.
        done = run_forget(store, collection, [path for _, path in found], full=full, by_content=content)
    if done.blocker:
        click.echo(f"deleted {len(done.ids)} image(s); ingest leaves them out until imagedb unforget")
    else:
        click.echo(f"forgot {len(done.ids)} image(s); ingest leaves them out until imagedb unforget")
    _report_rewrite(ctx, done)


def _report_rewrite(ctx: click.Context, done: Forgotten) -> None:
    """Warnings about what a VACUUM could not reach; exit 1 when an older snapshot kept the rows' bytes."""
    if done.unvacuumed:
        click.echo(
            f"warning: this role may not VACUUM {', '.join(done.unvacuumed)}: the deleted rows' bytes stay in"
            " those table files until the owner runs VACUUM on them",
            err=True,
        )
    if done.kept_by:
        click.echo(f"warning: {done.kept_by}", err=True)
    if done.statistics_kept:
        click.echo(
            "warning: this role may not rewrite pg_statistic: its file may still hold the paths as sampled values"
            " until a superuser runs `VACUUM FULL pg_statistic` in this database",
            err=True,
        )
    if done.blocker:
        click.echo(f"Error: {done.blocker}", err=True)
        ctx.exit(1)


@click.command(cls=Command, access="write", short_help="Let ingest store forgotten files again.")
@click.argument("files", nargs=-1)
@collection_option
@click.option("--all", "everything", is_flag=True, help="Every forgotten file of the collection.")
@click.pass_context
def unforget(ctx: click.Context, files: tuple[str, ...], collection: str, everything: bool) -> None:
    """Let the next ingest store FILES again (their paths, or content SHA-256s) that `imagedb forget` removed.

    Nothing is stored by this command: run `imagedb ingest` afterwards. Forgotten paths are kept only as their
    SHA-256, so give each path as it was ingested (a file name alone cannot be matched).
    """
    from imagedb.roles import unforget as run_unforget

    if bool(files) == everything:
        raise click.UsageError("give FILES or --all")
    with _store(ctx) as store:
        done = run_unforget(store, collection, None if everything else list(files))
    click.echo(f"{done} file(s) no longer left out of collection {escape(collection)}")
