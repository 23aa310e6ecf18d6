"""The pieces a search is declared with: its bounds, a query term, a Param (one field of a search) and the
parsers of its values."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

from psycopg import sql

from imagedb.errors import InvalidInput

if TYPE_CHECKING:
    pass


# The bounds of a search, the same for the CLI, the API and the library.
MAX_LIMIT = 1000
MAX_OFFSET = 100_000  # an index scan reads at most hnsw.max_scan_tuples rows: none lie past it
MAX_EF_SEARCH = 1000  # pgvector's upper bound for hnsw.ef_search
MAX_ID = 2**63 - 1  # image ids are PostgreSQL bigints
MAX_SIDE = 2**31 - 1  # a width or height in pixels: a PostgreSQL integer
MAX_RELEVANCE = 1000  # standard deviations above an unrelated image's score: far beyond any real match
MAX_CODE = 64  # the API's bound on a DICOM code (modality, body part), which is at most 16 characters
MAX_DISTANCE = 2.0  # the largest Euclidean distance between two unit vectors (opposite ones)
# What one query may ask the model to embed. Each distinct text and each image file costs model time while it
# holds one of the server's two embedding slots: 300 texts once held the model for minutes, and every other
# search waited for it (503). A real query mixes a few; these bounds leave room and refuse the rest unread.
MAX_TEXT_TERMS = 8  # distinct texts: a repeated text is embedded once
MAX_IMAGE_TERMS = 4  # image files (or uploads), each decoded and embedded
MAX_TERMS = 32  # all terms, stored images (id:N, one index read each) included

# The measures a search ranks and scores by (store/metrics.py says how each reaches SQL); cosine is the default.
METRICS = ("cosine", "euclidean", "pearson", "inner")
LOWER_IS_BETTER = frozenset({"euclidean"})  # a distance; the others are similarities, higher is better

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


class ParamError(InvalidInput):
    """A bad value of a search's fields. The message names them as `{name}` placeholders (their Param names), which
    each surface fills with its own: the CLI its option (--min-score), the API its query parameter (min_score);
    str() has the library's keywords. Other placeholders are the `values` given."""

    def __init__(self, template: str, **values: Any) -> None:
        self.template = template
        self.values = values
        super().__init__(self.named(lambda name: name))

    def named(self, name_of: Callable[[str], str]) -> str:
        try:
            return self.template.format_map(_Naming(name_of, self.values))
        except (ValueError, IndexError):  # remade from its own text (a copy of a message with braces in a value)
            return self.template


class _Naming(dict[str, Any]):
    def __init__(self, name_of: Callable[[str], str], values: dict[str, Any]) -> None:
        super().__init__(values)
        self.name_of = name_of

    def __missing__(self, key: str) -> str:
        return self.name_of(key)


@dataclass(frozen=True)
class Term:
    """One term of a query (imagedb.query parses them): a text, an image file, a stored image by id, or a keyword."""

    kind: Literal["text", "image", "id", "keyword"]  # a keyword's weight only says include (+) or exclude (-)
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


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    """key=value arguments as a dict; raises InvalidInput for one without '=' or with an empty key."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"expected key=value, not {pair!r}")
        out[key.strip()] = value
    return out


def parse_pairs_tuple(raw: Sequence[str]) -> tuple[tuple[str, str], ...]:
    return tuple(parse_pairs(list(raw)).items())


def parse_format(value: str) -> str:
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
