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
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from psycopg import sql

from imagedb.config import DEFAULT_COLLECTION, DEFAULT_EF_SEARCH
from imagedb.errors import InvalidInput

if TYPE_CHECKING:
    from imagedb.embed import ModelSpec

# The bounds of a search, the same for the CLI, the API and the library.
MAX_LIMIT = 1000
MAX_OFFSET = 100_000  # an index scan reads at most hnsw.max_scan_tuples rows: none lie past it
MAX_EF_SEARCH = 1000  # pgvector's upper bound for hnsw.ef_search
MAX_ID = 2**63 - 1  # image ids are PostgreSQL bigints
MAX_SIDE = 2**31 - 1  # a width or height in pixels: a PostgreSQL integer
MAX_RELEVANCE = 1000  # standard deviations above an unrelated image's score: far beyond any real match
MAX_CODE = 64  # the API's bound on a DICOM code (modality, body part), which is at most 16 characters

DATE_FORMATS = ("%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S")  # the CLI's; the API reads ISO 8601
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF", "DICOM")  # what ingest stores
# Phones name HEIF files .heic; Pillow reports them as HEIF.
FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF", "HEIC": "HEIF"}
# What --format accepts, in any case: each format followed by its aliases.
FORMAT_CHOICES = tuple(n for f in FORMATS for n in (f, *(a for a, to in FORMAT_ALIASES.items() if to == f)))

# Photos carry the time they were taken; other images fall back to the file's time (in UTC). Kept within the years
# Python can hold: a writer who stored 'infinity' made every search that reached that row fail.
IMAGE_DATE = (
    "LEAST(GREATEST(COALESCE(i.taken_at, i.mtime AT TIME ZONE 'UTC'),"
    " '0001-01-01'::timestamp), '9999-12-31'::timestamp)"
)

Clause = tuple[sql.Composable, dict[str, Any]]  # a condition on the images row `i`, and its bound parameters
_SAME = object()  # Api.default: the field's own default


@dataclass(frozen=True)
class Term:
    """One term of a query (imagedb.query parses them): a text, an image file, or a stored image by id."""

    kind: Literal["text", "image", "id"]
    value: str
    weight: float  # negative for a subtracted term


@dataclass(frozen=True)
class Api:
    """How the API's search routes take a field, where that differs from the CLI."""

    name: str | None = None  # the query parameter, when it is not the field's name
    default: Any = _SAME
    maximum: int | None = None  # a bound the CLI leaves to the database
    max_length: int | None = None
    description: str | None = None
    blank_is_none: bool = False  # an empty value is no filter (a cleared form field)


@dataclass(frozen=True)
class Param:
    """One field of a search, as the CLI, the API, the library and SQL take it."""

    name: str  # the library's keyword and the Filters key; the API's query parameter unless Api.name says otherwise
    type: type  # of one value as typed: str, int, float, bool or datetime
    help: str = ""  # the CLI's help text
    flags: tuple[str, ...] = ()  # the CLI's option names; none: no CLI option
    default: Any = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    choices: tuple[str, ...] = ()
    case_sensitive: bool = True  # False: choices in any case; the API then takes any text and check() decides
    metavar: str | None = None
    multiple: bool = False  # repeatable: the value is a tuple
    show_default: bool = False
    parse: Callable[[Any], Any] | None = None  # what the CLI or the API took, to the library's value
    check: Callable[[Any], Any] | None = None  # the library's: the value, normalised, or InvalidInput
    # A filter's SQL condition, given the name to bind its parameters by and the value; identifiers through sql.
    clause: Callable[[str, Any], Clause] | None = None
    api: Api | None = Api()  # None: no query parameter of the search routes

    @property
    def query_name(self) -> str:
        """The API's query parameter."""
        return self.api.name if self.api is not None and self.api.name else self.name

    @property
    def query_default(self) -> Any:
        return self.default if self.api is None or self.api.default is _SAME else self.api.default

    @property
    def unset(self) -> Any:
        """The value that means "not given": no condition for a filter."""
        return () if self.multiple else self.default


def _key(name: str, suffix: str = "") -> str:
    """The name a filter's value is bound by: prefixed, so that none can be one of the index query's own (limit...)."""
    return f"filter_{name}{suffix}"


def _condition(template: str, value: Callable[[Any], Any] = lambda v: v) -> Callable[[str, Any], Clause]:
    """A clause of one parameter: `template` with {} where it goes, bound to value(the filter's value)."""

    def clause(name: str, given: Any) -> Clause:
        return sql.SQL(template).format(sql.Placeholder(_key(name))), {_key(name): value(given)}

    return clause


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _contains(text: str) -> str:
    return f"%{_like_escape(text)}%"


def _glob_to_like(glob: str) -> str:
    return _like_escape(glob).replace("*", "%").replace("?", "_")


def _formats(fmt: str) -> list[str]:
    # Ingest stored multi-picture JPEGs as MPO before it stored them as JPEG.
    return [fmt, "MPO"] if fmt == "JPEG" else [fmt]


def _dicom(name: str, value: str) -> Clause:
    # DICOM codes are upper case (CS); any case matches. The filter's name is the dicom_images column.
    condition = sql.SQL("EXISTS (SELECT 1 FROM dicom_images d WHERE d.image_id = i.id AND d.{} = upper({}))")
    return condition.format(sql.Identifier(name), sql.Placeholder(_key(name))), {_key(name): value.strip()}


def _attributes(name: str, pairs: tuple[tuple[str, str], ...]) -> Clause:
    clauses, params = [], {}
    for n, (key, value) in enumerate(pairs):
        key_at, value_at = _key(name, f"_key_{n}"), _key(name, f"_value_{n}")
        clauses.append(sql.SQL("i.attributes ->> {} = {}").format(sql.Placeholder(key_at), sql.Placeholder(value_at)))
        params[key_at], params[value_at] = key, value
    return sql.SQL(" AND ").join(clauses), params


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    """key=value arguments as a dict; raises InvalidInput for one without '=' or with an empty key."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"expected key=value, not {pair!r}")
        out[key.strip()] = value
    return out


def _pairs(raw: Sequence[str]) -> tuple[tuple[str, str], ...]:
    return tuple(parse_pairs(list(raw)).items())


def _format(value: str) -> str:
    fmt = value.strip().upper().lstrip(".")
    fmt = FORMAT_ALIASES.get(fmt, fmt)
    if fmt not in FORMATS:  # a typo would otherwise match nothing, silently
        raise InvalidInput(f"unknown format {value!r}: use one of {', '.join(FORMATS)} (or JPG, TIF, HEIC)")
    return fmt


def utc_naive(value: datetime) -> datetime:
    """The image date compared against is a naive UTC timestamp (taken_at, or mtime in UTC): an aware bound is
    converted to it, so that aware and naive bounds compare with each other and with the column."""
    if value.tzinfo is None:
        return value
    try:
        return value.astimezone(timezone.utc).replace(tzinfo=None)
    except OverflowError as exc:  # 0001-01-01T00:00+01:00 is before the first representable moment in UTC
        raise InvalidInput(f"the date {value.isoformat()} is out of range once converted to UTC") from exc


_TAKEN = "Taken (else file time)"

# The filters, in the order of `imagedb search --help`; register() adds one.
FILTERS: dict[str, Param] = {
    p.name: p
    for p in (
        Param(
            "after", datetime, f"{_TAKEN} on or after DATE.", ("--after",), metavar="DATE", check=utc_naive,
            clause=_condition(IMAGE_DATE + " >= {}"),
        ),
        Param(
            "before", datetime,
            f"{_TAKEN} before DATE. DATE is YYYY-MM-DD[THH:MM:SS] (a space may replace the T), in UTC.",
            ("--before",), metavar="DATE", check=utc_naive, clause=_condition(IMAGE_DATE + " < {}"),
        ),
        Param(
            "camera", str, "Camera make or model contains this text (any case).", ("--camera",),
            clause=_condition("concat_ws(' ', i.camera_make, i.camera_model) ILIKE {}", _contains),
        ),
        Param(
            "format", str,
            "File format, any case: JPEG (JPG), PNG, WEBP, GIF, BMP, TIFF (TIF), HEIF (HEIC), AVIF, DICOM.",
            ("--format",), choices=FORMAT_CHOICES, case_sensitive=False, metavar="FORMAT", check=_format,
            clause=_condition("i.format = ANY({})", _formats),
        ),
        Param(
            "min_width", int, "At least this many pixels wide.", ("--min-width",), minimum=1,
            clause=_condition("i.width >= {}"), api=Api(maximum=MAX_SIDE),
        ),
        Param(
            "min_height", int, "At least this many pixels high.", ("--min-height",), minimum=1,
            clause=_condition("i.height >= {}"), api=Api(maximum=MAX_SIDE),
        ),
        Param(
            "path", str, "Path matches this glob (* and ?), e.g. '*/holidays/*'.", ("--path",),
            clause=_condition("i.path LIKE {}", _glob_to_like),
        ),
        Param(
            "attributes", str, "User attribute equals value; repeatable.", ("--attr",), metavar="KEY=VALUE",
            multiple=True, parse=_pairs, clause=_attributes, api=Api(name="attr", description="KEY=VALUE, repeatable"),
        ),
        # The stored images a query is made of, left out of its results: set by the library, never typed.
        Param(
            "exclude", int, multiple=True, clause=_condition("i.id <> ALL({})", list), api=None,
        ),
        Param(
            "modality", str, "DICOM modality, any case, e.g. CT, MR, CR, US.", ("--modality",), clause=_dicom,
            api=Api(max_length=MAX_CODE, blank_is_none=True, description="DICOM modality: CT, MR..."),
        ),
        Param(
            "body_part", str, "DICOM body part examined, any case, e.g. CHEST, HEAD.", ("--body-part",),
            clause=_dicom, api=Api(max_length=MAX_CODE, blank_is_none=True, description="DICOM body part: CHEST..."),
        ),
    )
}  # fmt: skip


def register(param: Param) -> None:
    """Add a filter: from then on `imagedb search`, the API's search routes made after it, and the library take it."""
    if param.clause is None:
        raise ValueError(f"the filter {param.name!r} needs a clause")
    if param.name in FILTERS:
        raise ValueError(f"a filter named {param.name!r} exists already")
    FILTERS[param.name] = param


class Filters:
    """Conditions a search result must meet, by filter name (FILTERS); immutable. Every value reaches SQL as a
    bound parameter. A filter not given reads as its unset value (None, or () for a repeatable one)."""

    __slots__ = ("_values",)
    _values: dict[str, Any]

    def __init__(self, **values: Any) -> None:
        unknown = sorted(values.keys() - FILTERS.keys())
        if unknown:
            raise TypeError(f"no filter named {unknown[0]!r} (filters: {', '.join(FILTERS)})")
        given = {n: tuple(v) if FILTERS[n].multiple else v for n, v in values.items() if v is not None}
        object.__setattr__(self, "_values", {n: v for n, v in given.items() if v != FILTERS[n].unset})

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_") and name in FILTERS:
            return self._values.get(name, FILTERS[name].unset)
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Filters are immutable: use replace()")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Filters) and self._values == other._values

    def __hash__(self) -> int:
        return hash(frozenset(self._values.items()))

    def __repr__(self) -> str:
        return f"Filters({', '.join(f'{n}={v!r}' for n, v in self._values.items())})"

    def replace(self, **changes: Any) -> Filters:
        return Filters(**{**self._values, **changes})

    def items(self) -> list[tuple[Param, Any]]:
        """The filters given, with their values, in declaration order."""
        return [(p, self._values[n]) for n, p in FILTERS.items() if n in self._values]

    def checked(self) -> Filters:
        """Each value as its filter's check() leaves it; raises InvalidInput for a value no filter takes."""
        if any("\x00" in text for _, value in self.items() for text in _texts(value)):
            raise InvalidInput("a filter value cannot contain a NUL character")
        checked = Filters(**{p.name: p.check(v) if p.check else v for p, v in self.items()})
        if checked.after and checked.before and checked.after >= checked.before:
            raise InvalidInput("--after must be earlier than --before")
        return checked

    def clauses(self) -> tuple[list[sql.Composable], dict[str, Any]]:
        """The SQL conditions of the filters given, to be joined by AND, and their parameters."""
        clauses: list[sql.Composable] = []
        params: dict[str, Any] = {}
        for param, value in self.items():
            assert param.clause is not None  # register() refuses a filter without one
            clause, bound = param.clause(param.name, value)
            clauses.append(clause)
            params.update(bound)
        return clauses, params


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, tuple):
        return [text for item in value for text in _texts(item)]
    return []


def _bounded(low: float, high: float, message: str) -> Callable[[Any], Any]:
    """A check that `value` lies in [low, high]; `message` says so, with {} for the value."""

    def check(value: Any) -> Any:
        if not low <= value <= high:
            raise InvalidInput(message.format(value))
        return value

    return check


def _finite(value: float) -> float:
    if not np.isfinite(value):
        raise InvalidInput(f"min_relevance is a number of standard deviations, not {value}")
    return value


def _model_spec(value: str) -> ModelSpec | None:
    from imagedb.embed import ModelSpec  # torch and open_clip load later, only when the model is used

    # Only an explicit --model: IMAGEDB_MODEL applies when a collection is created (collection.get_or_create).
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
        check=_bounded(1, MAX_LIMIT, f"limit must be between 1 and {MAX_LIMIT}, not {{}}"), api=Api(default=24),
    )  # fmt: skip
    offset: int = _setting(
        int, 0, flags=("--offset",), minimum=0, maximum=MAX_OFFSET, show_default=True, help="Skip this many (paging).",
        check=_bounded(0, MAX_OFFSET, f"offset must be between 0 and {MAX_OFFSET:,}, not {{}}"),
    )  # fmt: skip
    filters: Filters = Filters()  # checked by Filters.checked(); the store turns them into SQL with Filters.clauses()
    min_score: float | None = _setting(
        float, None, flags=("--min-score",), minimum=-1, maximum=1, help="Drop results below this cosine similarity.",
        check=_bounded(-1.0, 1.0, "min_score is a cosine similarity, between -1 and 1, not {}"),
    )  # fmt: skip
    # Standard deviations above an unrelated image's score (relevance.py); the library takes any finite number.
    min_relevance: float | None = _setting(
        float, None, flags=("--min-relevance",), minimum=-MAX_RELEVANCE, maximum=MAX_RELEVANCE, metavar="R",
        check=_finite, api=Api(description="standard deviations above an unrelated image's score"),
        help="Drop results less relevant than R: standard deviations above an unrelated image's score for this"
        " query (one cutoff for every query; see the README).",
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
    # None: the collection's tuned value (tuning.py).
    ef_search: int | None = _setting(
        int, None, flags=("--ef-search",), minimum=1, maximum=MAX_EF_SEARCH, api=None,
        check=_bounded(1, MAX_EF_SEARCH, f"ef_search must be between 1 and {MAX_EF_SEARCH}, not {{}}"),
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
        changes = {
            p.name: p.check(getattr(self, p.name))
            for p in settings()
            if p.check is not None and getattr(self, p.name) is not None
        }
        return replace(self, **changes)


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
