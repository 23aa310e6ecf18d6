"""What one search is, declared once: its terms, filters, thresholds, order, paging, model and index setting.

Each field of a search is one Param: the type of its value, its CLI option and help, its bounds, the library's
check and, for a filter, the SQL condition an image must meet. Everything else is derived from these entries: the
options of `imagedb search` (cli/search.py), the query parameters of the API's search routes (api/schemas.py), the
library's checks (search.py) and the WHERE clause of the index query (store/search.py). A new filter is one Param
passed to register().
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import Field, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from imagedb.config import DEFAULT_COLLECTION, DEFAULT_EF_SEARCH
from imagedb.errors import InvalidInput

if TYPE_CHECKING:
    from imagedb.embed import ModelSpec

from imagedb.request.filters import FILTERS, Filters, register
from imagedb.request.param import (
    DATE_FORMATS,
    FORMAT_ALIASES,
    FORMAT_CHOICES,
    FORMATS,
    IMAGE_DATE,
    LOWER_IS_BETTER,
    MAX_CODE,
    MAX_DISTANCE,
    MAX_EF_SEARCH,
    MAX_ID,
    MAX_IMAGE_TERMS,
    MAX_LIMIT,
    MAX_OFFSET,
    MAX_RELEVANCE,
    MAX_SIDE,
    MAX_TERMS,
    MAX_TEXT_TERMS,
    METRICS,
    Api,
    Param,
    ParamError,
    Term,
    parse_pairs,
    utc_naive,
)  # fmt: skip


def _bounded(low: float, high: float, message: str) -> Callable[[Any], Any]:
    """A check that `value` lies in [low, high]; `message` (a ParamError template) says so, with {value}."""

    def check(value: Any) -> Any:
        if not low <= value <= high:
            raise ParamError(message, value=value)
        return value

    return check


def _finite(value: float) -> float:
    if not np.isfinite(value):
        raise ParamError("{min_relevance} is a number of standard deviations, not {value}", value=value)
    return value


def _metric(value: str) -> str:
    # The CLI and the API refuse other values before this (exit 2, 422); a library caller gets the same words.
    if value not in METRICS:
        raise InvalidInput(f"unknown metric {value!r}: use one of {', '.join(METRICS)}")
    return value


def _model_spec(value: str) -> ModelSpec | None:
    from imagedb.embed import ModelSpec  # when a --model is given: `imagedb --help` imports this module, not embed

    # Only an explicit --model: IMAGEDB_MODEL applies when a collection is created (get_or_create_collection).
    return ModelSpec.parse(value) if value else None


def _setting(type: type, default: Any, **declared: Any) -> Any:
    """A SearchRequest field and its Param (named and defaulted by the field)."""
    return field(default=default, metadata={"param": (type, declared)})


@dataclass(frozen=True)
class SearchRequest:
    """One search: what search.search() and search.plan() take. Its fields after `terms` are declared with their
    Param; the CLI's options come in field order, the filters' in place of `filters`."""

    terms: tuple[Term, ...] = ()  # see query.py: texts, image files and stored images, with weights
    collection: str = _setting(
        str, DEFAULT_COLLECTION, flags=("--collection", "-c"), show_default=True, help="Collection to use."
    )
    # Any model the collection holds, e.g. one being added, to compare before switching; None: its search model.
    model: ModelSpec | None = _setting(
        str, None, flags=("--model", "-m"), parse=_model_spec, api=None,
        help="Search with this model, one the collection holds (default: the one it searches with); e.g. a model"
        " being added, to compare before `imagedb models use` (`imagedb models list` shows them).",
    )  # fmt: skip
    limit: int = _setting(
        int, 10, flags=("--limit", "-k"), minimum=1, maximum=MAX_LIMIT, show_default=True, help="Results to show.",
        check=_bounded(1, MAX_LIMIT, f"{{limit}} must be between 1 and {MAX_LIMIT}, not {{value}}"),
        api=Api(default=24),
    )  # fmt: skip
    offset: int = _setting(
        int, 0, flags=("--offset",), minimum=0, maximum=MAX_OFFSET, show_default=True, help="Skip this many (paging).",
        check=_bounded(0, MAX_OFFSET, f"{{offset}} must be between 0 and {MAX_OFFSET:,}, not {{value}}"),
    )  # fmt: skip
    filters: Filters = Filters()  # checked by Filters.checked(); the store turns them into SQL with Filters.clauses()
    min_score: float | None = _setting(
        float, None, flags=("--min-score",), minimum=-1, maximum=1,
        help="Drop results below this score: a cosine similarity, or the Pearson correlation or inner product with"
        " that --metric (with euclidean, use --max-distance).",
        check=_bounded(-1.0, 1.0, "{min_score} is a similarity (cosine, Pearson or inner product), between -1 and"
                       " 1, not {value}"),
    )  # fmt: skip
    # A distance is a maximum, not a minimum: a threshold of its own, so that no cutoff changes meaning by metric.
    max_distance: float | None = _setting(
        float, None, flags=("--max-distance",), minimum=0, maximum=MAX_DISTANCE, metavar="D",
        check=_bounded(0.0, MAX_DISTANCE, f"{{max_distance}} is a Euclidean distance, between 0 and"
                       f" {MAX_DISTANCE:g}, not {{value}}"),
        api=Api(description="with metric=euclidean: drop results farther than this"),
        help="With --metric euclidean: drop results farther than this distance (0 to 2, as vectors have length 1).",
    )  # fmt: skip
    # Standard deviations above an unrelated image's score (relevance.py); the library takes any finite number.
    min_relevance: float | None = _setting(
        float, None, flags=("--min-relevance",), minimum=-MAX_RELEVANCE, maximum=MAX_RELEVANCE, metavar="R",
        check=_finite, api=Api(description="standard deviations above an unrelated image's score"),
        help="Drop results less relevant than R: standard deviations above an unrelated image's score for this"
        " query (one cutoff for every query; see docs/search.md).",
    )  # fmt: skip
    collapse_duplicates: bool = _setting(
        bool, False, flags=("--collapse-duplicates",),
        help="One result per duplicate group of the last `imagedb dupes` run: its best match, with the count of the"
        " others.",
        api=Api(description="one result per duplicate group (`imagedb dupes`), its best match"),
    )  # fmt: skip
    sort: Literal["score", "date"] = _setting(
        str, "score", flags=("--sort",), choices=("score", "date"), show_default=True,
        help="Order of the best matches: by score, or by date, newest first.",
    )  # fmt: skip
    metric: str = _setting(
        str, "cosine", flags=("--metric",), choices=METRICS, show_default=True, check=_metric,
        api=Api(description="cosine, euclidean (a distance: lower is better), pearson or inner"),
        help="Measure to rank and score by: cosine similarity, euclidean distance (lower is better), pearson"
        " correlation or inner product. Pearson re-ranks candidates from the index (docs/search.md).",
    )  # fmt: skip
    hybrid: bool = _setting(
        bool, False, flags=("--hybrid",),
        help="Rank by the texts' vector and by their words (file name, folders, attributes, captions, OCR text)"
        " together, by reciprocal rank fusion (docs/keywords.md); cosine only.",
        api=Api(description="rank by vector and keywords together (reciprocal rank fusion)"),
    )  # fmt: skip
    # None: the collection's tuned value (tuning.py).
    ef_search: int | None = _setting(
        int, None, flags=("--ef-search",), minimum=1, maximum=MAX_EF_SEARCH, api=None,
        check=_bounded(1, MAX_EF_SEARCH, f"{{ef_search}} must be between 1 and {MAX_EF_SEARCH}, not {{value}}"),
        help="HNSW candidate list size: higher is more exact and slower. Default: the collection's, set by"
        f" `imagedb tune`, else {DEFAULT_EF_SEARCH}.",
    )  # fmt: skip

    def __post_init__(self) -> None:
        object.__setattr__(self, "terms", tuple(self.terms))  # any sequence; kept as a tuple, hashable

    def checked(self) -> SearchRequest:
        """The request with each setting as its check leaves it; raises InvalidInput. The filters are checked
        apart (Filters.checked), once the collection is known."""
        if not self.terms:
            raise InvalidInput("the query is empty: give a text, an image path or id:N")
        _check_cost(self.terms)
        changes = {
            p.name: p.check(getattr(self, p.name))
            for p in settings()
            if p.check is not None and getattr(self, p.name) is not None
        }
        request = replace(self, **changes)
        # A threshold in a measure the search does not score by would filter on numbers it never shows.
        if request.metric in LOWER_IS_BETTER and request.min_score is not None:
            raise ParamError(
                "{min_score} is a similarity, and {metric} {chosen} scores by distance (lower is better):"
                " use {max_distance}",
                chosen=request.metric,
            )
        if request.hybrid and (request.metric != "cosine" or request.collapse_duplicates):
            raise InvalidInput("--hybrid ranks by cosine similarity, without --collapse-duplicates")
        if request.max_distance is not None and request.metric not in LOWER_IS_BETTER:
            raise ParamError(
                "{max_distance} applies to {metric} euclidean only, not {chosen}: use {min_score}",
                chosen=request.metric,
            )
        return request


def _check_cost(terms: Sequence[Term]) -> None:
    """Refuses a query that would hold the model for long (param.py says why), before anything is read or
    embedded."""
    texts = len({t.value for t in terms if t.kind == "text"})
    images = sum(t.kind == "image" for t in terms)
    if texts > MAX_TEXT_TERMS:
        raise InvalidInput(
            f"the query has {texts} different texts, at most {MAX_TEXT_TERMS} are allowed: each one is embedded"
            " by the model, which other searches wait for"
        )
    if images > MAX_IMAGE_TERMS:
        raise InvalidInput(
            f"the query has {images} images, at most {MAX_IMAGE_TERMS} are allowed: each one is decoded and"
            " embedded by the model, which other searches wait for"
        )
    if len(terms) > MAX_TERMS:
        raise InvalidInput(f"the query has {len(terms)} terms, at most {MAX_TERMS} are allowed")


def _declared(f: Field[Any]) -> Param:
    type_, declared = f.metadata["param"]
    return Param(f.name, type_, default=f.default, **declared)


def settings() -> list[Param]:
    """The Params of SearchRequest's fields other than terms and filters, in field order."""
    return [_declared(f) for f in fields(SearchRequest) if "param" in f.metadata]


def params() -> list[Param]:
    """Every Param of a search, in the order of `imagedb search --help`: the filters in place of `filters`."""
    out: list[Param] = []
    for f in fields(SearchRequest):
        if f.name == "filters":
            out += FILTERS.values()
        elif "param" in f.metadata:
            out.append(_declared(f))
    return out


def surface_name(name: str, surface: Literal["cli", "api"]) -> str:
    """How a surface names a search's field: the CLI by its long option, the API by its query parameter."""
    param = next((p for p in params() if p.name == name), None)
    if param is None:
        return name
    if surface == "cli":
        return next((f for f in param.flags if f.startswith("--")), name)
    return param.query_name if param.api is not None else name


def from_values(terms: Sequence[Term], values: Mapping[str, Any]) -> SearchRequest:
    """The request from what the CLI or the API took, by Param name, each value parsed by its Param. A filter not
    given (None, or empty when repeatable) sets no condition; a setting not given (None) keeps its default."""
    declared = {p.name: p for p in params()}
    chosen: dict[str, Any] = {}
    filters: dict[str, Any] = {}
    for name, value in values.items():
        param = declared[name]
        if value is not None and value != param.unset and param.parse is not None:
            value = param.parse(value)
        if name in FILTERS:
            filters[name] = value
        elif value is not None:
            chosen[name] = value
    return SearchRequest(tuple(terms), filters=Filters(**filters), **chosen)


__all__ = [
    "DATE_FORMATS", "FILTERS", "FORMAT_ALIASES", "FORMAT_CHOICES", "FORMATS", "IMAGE_DATE", "LOWER_IS_BETTER",
    "MAX_CODE", "MAX_DISTANCE", "MAX_EF_SEARCH", "MAX_ID", "MAX_IMAGE_TERMS", "MAX_LIMIT", "MAX_OFFSET",
    "MAX_RELEVANCE", "MAX_SIDE", "MAX_TERMS", "MAX_TEXT_TERMS", "METRICS", "Api", "Filters", "Param", "ParamError",
    "SearchRequest", "Term", "from_values", "params", "parse_pairs", "register", "settings", "surface_name",
    "utc_naive",
]  # fmt: skip
