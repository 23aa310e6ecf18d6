"""`imagedb tune` and the recall lines of `imagedb db check --recall` and `imagedb db info`."""

from __future__ import annotations

from collections.abc import Sequence

import click

from imagedb import config
from imagedb.cli.support import Command, open_store
from imagedb.display import escape


def recall_table(points: Sequence, in_use: int | None = None) -> list[str]:  # type: ignore[type-arg]
    lines = [f"{'ef_search':>9}  {'recall@10':>9}  {'p50 ms':>7}"]
    for p in points:
        mark = "  <- searches use this" if p.ef_search == in_use else ""
        lines.append(f"{p.ef_search:>9}  {p.recall:>9.3f}  {p.p50_ms:>7.2f}{mark}")
    return lines


@click.command("tune", cls=Command, access="none")
@click.option("--collection", "-c", default=config.DEFAULT_COLLECTION, show_default=True, help="Collection to tune.")
@click.option(
    "--target-recall",
    default=0.95,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="Recall@10 to reach: the share of the exact 10 nearest that a search returns.",
)
@click.option(
    "--queries",
    default=100,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Stored images used as queries (each needs one exact scan of the collection).",
)
@click.pass_context
def tune(ctx: click.Context, collection: str, target_recall: float, queries: int) -> None:
    """Store the smallest ef_search that meets a recall target for a collection.

    Stored images serve as queries; the index's top 10 (as `imagedb search` asks for them) is compared with an
    exact scan, at growing ef_search. `imagedb search`, the HTTP API and imagedb_nearest() then use the value
    found. Re-run it when `imagedb db info` says the collection has grown.
    """
    from imagedb.tuning import tune as run_tune

    with open_store(ctx) as store:
        tuned = run_tune(store, collection, target=target_recall, queries=queries)
    for line in recall_table(tuned.points):
        click.echo(line)
    reached = tuned.points[-1].recall
    if tuned.met:
        click.echo(
            f"{escape(tuned.collection)}: ef_search {tuned.ef_search} (recall@10 {reached:.3f} >= {tuned.target:g}"
            f" on {tuned.queries} queries, {tuned.size} images); searches use it from now on"
        )
    else:
        click.echo(
            f"{escape(tuned.collection)}: no ef_search up to {tuned.ef_search} reaches recall@10 {tuned.target:g}"
            f" (best {reached:.3f}); stored {tuned.ef_search}. Rebuild the index with more links:"
            " imagedb db reindex --m 32 --ef-construction 128",
            err=True,
        )


def recall_check_lines(ctx: click.Context, collection: str, queries: int) -> list[str]:
    from imagedb.tuning import check_recall

    with open_store(ctx) as store:
        in_use, points, size = check_recall(store, collection, queries=queries)
    head = f"recall of {escape(collection)} ({size} images, {min(queries, size)} stored images as queries):"
    return [head, *recall_table(points, in_use)]


# Below this many images `imagedb tune` is not suggested: the index search at the default ef_search (100) already
# finds nearly the exact top 10 (clustered, CLIP-like vectors: recall@10 0.988 at 100,000 even at ef_search 40,
# bench/results/growth.txt); at 25 images the candidate list holds the whole collection.
TUNE_MATTERS_FROM = 100_000


def info_lines(store, name: str, images: int) -> list[str]:  # type: ignore[no-untyped-def]
    """What `db info` says of a collection's recall and its ef_search."""
    from imagedb.collection import get_collection
    from imagedb.display import iso
    from imagedb.tuning import ef_search_for, last_recall

    found = get_collection(store, name)
    ef = ef_search_for(store.tuning.tuning(found))
    last = last_recall(store, found)
    if last is None and images < TUNE_MATTERS_FROM:
        return [f"  ef_search {ef}; recall not measured (tuning matters from about {TUNE_MATTERS_FROM:,} images)"]
    if last is None:
        return [f"  ef_search {ef}; recall never measured: imagedb tune -c {escape(name)}"]
    line = (
        f"  ef_search {ef}; recall@10 {last.recall:.3f} at ef_search {last.ef_search}, measured {iso(last.at)}"
        f" on {last.size} images"
    )
    if last.stale:
        line += f"; grown {last.grown:.1f}x since: re-tune with imagedb tune -c {escape(name)}"
    return [line]
