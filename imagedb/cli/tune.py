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
    help="Queries of each kind, image and text (each needs one exact scan of the collection).",
)
@click.option(
    "--max-latency-ms",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Accept no ef_search whose median search time is above this (ms); say so if the target needs more.",
)
@click.pass_context
def tune(ctx: click.Context, collection: str, target_recall: float, queries: int, max_latency_ms: float | None) -> None:
    """Store the smallest ef_search that meets a recall target, for image and for text queries.

    The index's top 10 (as `imagedb search` asks for them) is compared with an exact scan, at growing ef_search,
    for image queries (made from stored images) and for text queries apart: the query texts users asked (the
    text cache) when it holds enough, else text-like probes. Text queries sit far from the images and usually need
    a larger ef_search, which searches with text then use. `imagedb search`, the HTTP API and imagedb_nearest()
    use the values found. Re-run it when `imagedb db info` says the collection has grown.
    """
    from imagedb.tuning import tune as run_tune

    with open_store(ctx) as store:
        tuned = run_tune(store, collection, target=target_recall, queries=queries, max_latency_ms=max_latency_ms)
    name = escape(tuned.collection)
    for kind, choice, source in (
        ("image", tuned.image, f"{tuned.queries} image queries"),
        ("text", tuned.text, escape(tuned.text_queries)),
    ):
        click.echo(f"{kind} queries ({source}):")
        for line in recall_table(choice.points):
            click.echo(line)
        if choice.met:
            click.echo(
                f"{name}: {kind} queries: ef_search {choice.ef_search} (recall@10 {choice.recall:.3f} >="
                f" {tuned.target:g}, {tuned.size} images); searches use it from now on"
            )
        elif choice.limited:
            click.echo(
                f"{name}: {kind} queries: cannot reach recall@10 {tuned.target:g} within {tuned.max_latency_ms:g} ms"
                f" (best {choice.recall:.3f} at ef_search {choice.ef_search}, stored). Allow more time with"
                " --max-latency-ms, or rebuild the index with more links: imagedb db reindex --m 32 --ef-construction"
                " 128",
                err=True,
            )
        else:
            click.echo(
                f"{name}: {kind} queries: no ef_search up to {choice.ef_search} reaches recall@10 {tuned.target:g}"
                f" (best {choice.recall:.3f}); stored {choice.ef_search}. Rebuild the index with more links:"
                " imagedb db reindex --m 32 --ef-construction 128",
                err=True,
            )


def recall_check_lines(ctx: click.Context, collection: str, queries: int) -> list[str]:
    from imagedb.tuning import check_recall

    with open_store(ctx) as store:
        checked = check_recall(store, collection, queries=queries)
    name = escape(collection)
    return [
        f"recall of {name} ({checked.size} images), image queries ({checked.queries} made from stored images):",
        *recall_table(checked.points, checked.in_use),
        f"recall of {name}, text queries ({escape(checked.text_queries)}):",
        *recall_table(checked.text_points, checked.text_in_use),
    ]


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
    if last.text_recall is not None:
        line += (
            f"; text queries: ef_search {ef_search_for(store.tuning.tuning(found), text=True)}, recall@10"
            f" {last.text_recall:.3f} at ef_search {last.text_ef_search} ({escape(last.text_queries or '')})"
        )
    if last.stale:
        line += f"; grown {last.grown:.1f}x since: re-tune with imagedb tune -c {escape(name)}"
    return [line]
