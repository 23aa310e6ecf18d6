"""`imagedb search`: options, the query from the arguments, and the table, JSON and path outputs."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from imagedb import config
from imagedb.cli.options import collection_option, model_spec, search_model_option
from imagedb.cli.support import Command
from imagedb.cli.support import open_store as _store
from imagedb.display import escape, iso
from imagedb.errors import InvalidInput

_DATE = click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"])
# What --format accepts, in any case; JPG, TIF and HEIC are aliases of JPEG, TIFF and HEIF (search.FORMAT_ALIASES).
FORMATS = ("JPEG", "JPG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "TIF", "HEIF", "HEIC", "AVIF", "DICOM")


@click.command(cls=Command, access="read", short_help="Find images by text, by image file or by stored image.")
@click.argument("query", nargs=-1)
@click.option("--image", "-i", "images", multiple=True, type=click.Path(), help="Add an image file to the query.")
@click.option(
    "--like", "-l", "likes", multiple=True, type=click.IntRange(1, 2**63 - 1), help="Add a stored image (by id)."
)
@collection_option
@search_model_option
@click.option("--limit", "-k", default=10, show_default=True, type=click.IntRange(1, 1000), help="Results to show.")
@click.option("--offset", default=0, show_default=True, type=click.IntRange(0, 100000), help="Skip this many (paging).")
@click.option("--after", type=_DATE, metavar="DATE", help="Taken (else file time) on or after DATE.")
@click.option(
    "--before",
    type=_DATE,
    metavar="DATE",
    help="Taken (else file time) before DATE. DATE is YYYY-MM-DD[THH:MM:SS] (a space may replace the T), in UTC.",
)
@click.option("--camera", help="Camera make or model contains this text (any case).")
@click.option(
    "--format",
    "image_format",
    type=click.Choice(FORMATS, case_sensitive=False),
    metavar="FORMAT",
    help="File format, any case: JPEG (JPG), PNG, WEBP, GIF, BMP, TIFF (TIF), HEIF (HEIC), AVIF, DICOM.",
)
@click.option("--min-width", type=click.IntRange(1), help="At least this many pixels wide.")
@click.option("--min-height", type=click.IntRange(1), help="At least this many pixels high.")
@click.option("--path", "path_glob", help="Path matches this glob (* and ?), e.g. '*/holidays/*'.")
@click.option("--attr", "attrs", multiple=True, metavar="KEY=VALUE", help="User attribute equals value; repeatable.")
@click.option("--modality", help="DICOM modality, any case, e.g. CT, MR, CR, US.")
@click.option("--body-part", help="DICOM body part examined, any case, e.g. CHEST, HEAD.")
@click.option("--min-score", type=click.FloatRange(-1, 1), help="Drop results below this cosine similarity.")
@click.option(
    "--min-relevance",
    type=click.FloatRange(-1000, 1000),
    metavar="R",
    help="Drop results less relevant than R: standard deviations above an unrelated image's score for this"
    " query (one cutoff for every query; see the README).",
)
@click.option(
    "--collapse-duplicates",
    is_flag=True,
    help="One result per duplicate group of the last `imagedb dupes` run: its best match, with the count of the"
    " others.",
)
@click.option(
    "--sort",
    type=click.Choice(["score", "date"]),
    default="score",
    show_default=True,
    help="Order of the best matches: by score, or by date, newest first.",
)
@click.option(
    "--ef-search",
    type=click.IntRange(1, 1000),
    help="HNSW candidate list size: higher is more exact and slower. Default: the collection's, set by"
    f" `imagedb tune`, else {config.DEFAULT_EF_SEARCH}.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line (dates in UTC, ISO 8601).")
@click.option("--paths", "as_paths", is_flag=True, help="Only the paths, one per line, escaped as the table's.")
@click.option("--null", "-0", "as_null", is_flag=True, help="Only the paths, unescaped, each ended by NUL (xargs -0).")
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
    modality: str | None,
    body_part: str | None,
    min_score: float | None,
    min_relevance: float | None,
    collapse_duplicates: bool,
    sort: str,
    ef_search: int | None,
    as_json: bool,
    as_paths: bool,
    as_null: bool,
) -> None:
    """Find the images nearest to QUERY: texts, image paths and id:N, joined by + and -, with W: weights.

    \b
      imagedb search a dog on a beach
      imagedb search "beach + sunset - people"
      imagedb search 2:"red dress" + ./shoe.jpg --format jpeg --after 2024-01-01
      imagedb search '"C++ code"'     (quoted inside: a + or - that is text)

    One argument is read as the HTTP API reads its q parameter, quotes and all. Paths in the table and with
    --paths are escaped (a backslash, then n, t, r, xNN or uNNNN, and a backslash doubled); --null prints them
    as they are.
    """
    from imagedb.attributes import parse_pairs
    from imagedb.search import search as run_search
    from imagedb.store import Filters

    chosen = [flag for flag, on in (("--json", as_json), ("--paths", as_paths), ("--null", as_null)) if on]
    if len(chosen) > 1:
        raise click.UsageError(f"{chosen[0]} and {chosen[1]} cannot be used together: choose one output")
    terms = query_terms(query, images, likes)
    filters = Filters(
        after=after,
        before=before,
        camera=camera,
        format=image_format,
        min_width=min_width,
        min_height=min_height,
        path=path_glob,
        attributes=tuple(parse_pairs(list(attrs)).items()),
        modality=modality,
        body_part=body_part,
    )
    with _store(ctx) as store:
        results = run_search(
            store,
            terms,
            collection=collection,
            model=model_spec(model),
            limit=limit,
            offset=offset,
            ef_search=ef_search,
            filters=filters,
            min_score=min_score,
            sort=sort,  # type: ignore[arg-type]
            min_relevance=min_relevance,
            collapse_duplicates=collapse_duplicates,
        )
    if as_null:
        click.echo(b"".join(os.fsencode(r.path) + b"\0" for r in results), nl=False)  # bytes: written raw
    elif as_paths:
        for r in results:
            click.echo(escape(r.path))
    elif as_json:
        for r in results:
            row = {
                "rank": r.rank,
                "score": round(r.score, 6),
                "relevance": None if r.relevance is None else round(r.relevance, 3),
                "id": r.image_id,
                "path": r.path,
                "date": iso(r.date),
            }
            if collapse_duplicates:
                row["duplicates"] = r.others
            click.echo(json.dumps(row))
    elif not results:
        click.echo("no results", err=True)
    else:
        more = "  more" if collapse_duplicates else ""
        click.echo(f"{'rank':>4}  {'score':>6}  {'relev':>6}  {'id':>8}  {'date':<10}{more}  path")
        for r in results:
            rel = "-" if r.relevance is None else f"{r.relevance:.1f}"
            others = f"  {'+' + str(r.others) if r.others else '':>4}" if collapse_duplicates else ""
            click.echo(
                f"{r.rank:>4}  {r.score:>6.3f}  {rel:>6}  {r.image_id:>8}  {r.date:%Y-%m-%d}{others}  {escape(r.path)}"
            )


def query_terms(query: Sequence[str], images: Sequence[str], likes: Sequence[int]) -> list[Any]:
    """The query's terms, then --image files and --like ids, added.

    One argument is parsed exactly as the API parses its q string (query.parse_string), so that
    `imagedb search "dog +"` is refused and `"beach + sunset"` is a sum, as on the web page. Several arguments
    are already split by the shell. One argument that names an existing file is that image, spaces and all.
    """
    from imagedb.query import Term, is_file, names_image, no_image_file, parse, parse_string

    terms: list[Term] = []
    if len(query) == 1 and not names_image(query[0]):
        terms = parse_string(query[0], files=True)
    elif query or not (images or likes):
        terms = parse(query, files=True)
    for image in images:
        if not is_file(image):
            raise InvalidInput(f"--image: {no_image_file(image)}")
        terms.append(Term("image", str(Path(image).expanduser()), 1.0))
    terms += [Term("id", str(n), 1.0) for n in likes]
    return terms
