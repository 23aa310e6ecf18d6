"""`imagedb search`: options, the query from the arguments, and the table, JSON and path outputs."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from imagedb import request
from imagedb.cli.support import Command
from imagedb.cli.support import open_store as _store
from imagedb.display import escape, iso
from imagedb.errors import InvalidInput

if TYPE_CHECKING:  # `imagedb --help` does not import the search
    from imagedb.search import SearchResult


class SearchCommand(Command):
    """`imagedb search`: its own options, and after --like one option per Param of a search (request.params()),
    read from the declaration whenever click parses or shows help, so that a filter registered late is one too."""

    _derived: tuple[tuple[request.Param, ...], list[click.Parameter]] = ((), [])

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        declared = tuple(p for p in request.params() if p.flags)
        if declared != self._derived[0]:  # the same Option objects across one parse: click orders them by identity
            self._derived = (declared, [_option(p) for p in declared])
        own = super().get_params(ctx)
        at = next(n for n, p in enumerate(own) if p.name == "likes") + 1
        return [*own[:at], *self._derived[1], *own[at:]]


def _option(param: request.Param) -> click.Option:
    """The click option of a Param: its flags, help, bounds, choices, default and metavar."""
    settings: dict[str, Any] = {"help": param.help}
    if param.type is bool:
        settings["is_flag"] = True
    elif param.choices:
        settings["type"] = click.Choice(param.choices, case_sensitive=param.case_sensitive)
    elif param.type is datetime:
        settings["type"] = click.DateTime(request.DATE_FORMATS)
    elif param.type in (int, float) and (param.minimum is not None or param.maximum is not None):
        bounded = click.IntRange if param.type is int else click.FloatRange
        settings["type"] = bounded(param.minimum, param.maximum)
    elif param.type is not str:
        settings["type"] = param.type
    if param.default is not None and param.type is not bool:
        settings["default"] = param.default
    for key in ("metavar", "multiple", "show_default"):
        if getattr(param, key):
            settings[key] = getattr(param, key)
    return click.Option([*param.flags, param.name], **settings)


@click.command(cls=SearchCommand, access="read", short_help="Find images by text, by image file or by stored image.")
@click.argument("query", nargs=-1)
@click.option("--image", "-i", "images", multiple=True, type=click.Path(), help="Add an image file to the query.")
@click.option(
    "--like", "-l", "likes", multiple=True, type=click.IntRange(1, request.MAX_ID), help="Add a stored image (by id)."
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
    as_json: bool,
    as_paths: bool,
    as_null: bool,
    **values: Any,  # one per Param of a search (SearchCommand), by name
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
    from imagedb.search import search as run_search

    chosen = [flag for flag, on in (("--json", as_json), ("--paths", as_paths), ("--null", as_null)) if on]
    if len(chosen) > 1:
        raise click.UsageError(f"{chosen[0]} and {chosen[1]} cannot be used together: choose one output")
    wanted = request.from_values(query_terms(query, images, likes), values)
    collapse_duplicates = wanted.collapse_duplicates
    metric = wanted.metric
    with _store(ctx) as store:
        results = run_search(store, wanted)
    ranked_by_words = any(r.keyword_rank is not None or r.vector_rank is not None or r.matched for r in results)
    if as_null:
        click.echo(b"".join(os.fsencode(r.path) + b"\0" for r in results), nl=False)  # bytes: written raw
    elif as_paths:
        for r in results:
            click.echo(escape(r.path))
    elif as_json:
        for r in results:
            row = {
                "rank": r.rank,
                "score": _finite(r.score, 6),
                "metric": metric,  # what score measures: a distance (lower is better) for euclidean
                "relevance": None if r.relevance is None else _finite(r.relevance, 3),
                "id": r.image_id,
                "path": r.path,
                "date": iso(r.date),
            }
            if collapse_duplicates:
                row["duplicates"] = r.others
            if ranked_by_words:  # why it matched (docs/keywords.md)
                row.update(vector_rank=r.vector_rank, keyword_rank=r.keyword_rank, matched=list(r.matched))
                row["keyword_score"] = None if r.keyword_score is None else _finite(r.keyword_score, 6)
            click.echo(json.dumps(row, allow_nan=False))  # NaN or Infinity would not be JSON
    elif not results:
        click.echo("no results", err=True)
    else:
        more = "  more" if collapse_duplicates else ""
        more += f"  {'why':<24}" if ranked_by_words else ""
        # The score column is named by its measure, so a distance is not read as a similarity; cosine's stays "score".
        label, width = _SCORE_COLUMNS[metric]
        click.echo(f"{'rank':>4}  {label:>{width}}  {'relev':>6}  {'id':>8}  {'date':<10}{more}  path")
        for r in results:
            rel = "-" if r.relevance is None else f"{r.relevance:.1f}"
            others = f"  {'+' + str(r.others) if r.others else '':>4}" if collapse_duplicates else ""
            others += f"  {_why(r):<24}" if ranked_by_words else ""
            click.echo(
                f"{r.rank:>4}  {r.score:>{width}.3f}  {rel:>6}  {r.image_id:>8}  {r.date:%Y-%m-%d}{others}"
                f"  {escape(r.path)}"
            )


def _why(r: SearchResult) -> str:
    """Why a result of a keyword or hybrid ranking matched: its ranks and the query's words it holds."""
    ranks = [f"{name}#{rank}" for name, rank in (("vec", r.vector_rank), ("kw", r.keyword_rank)) if rank]
    return escape(" ".join([*ranks, ",".join(r.matched)]).strip())


# The table's score column per metric: its header and width.
_SCORE_COLUMNS = {
    "cosine": ("score", 6),
    "euclidean": ("distance", 8),
    "pearson": ("pearson", 7),
    "inner": ("inner", 6),
}


def query_terms(query: Sequence[str], images: Sequence[str], likes: Sequence[int]) -> list[Any]:
    """The query's terms, then --image files and --like ids, added.

    One argument is parsed exactly as the API parses its q string (query.parse_string), so that
    `imagedb search "dog +"` is refused and `"beach + sunset"` is a sum, as on the web page. Several arguments
    are already split by the shell. One argument that names an existing file is that image, spaces and all.
    """
    from imagedb.query import is_file, names_image, no_image_file, parse, parse_string
    from imagedb.request import Term

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


def _finite(value: float, digits: int) -> float | None:
    """A score rounded for JSON, or None (null) for one that is not a number: JSON has no NaN or Infinity."""
    return round(value, digits) if math.isfinite(value) else None
