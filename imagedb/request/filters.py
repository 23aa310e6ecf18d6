"""The filters of a search, declared once (FILTERS): each Param carries its SQL condition; Filters holds the values
of one search and builds its WHERE clause."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from psycopg import sql

from imagedb.errors import InvalidInput
from imagedb.request.param import (
    FORMAT_CHOICES,
    IMAGE_DATE,
    MAX_CODE,
    MAX_SIDE,
    Api,
    Clause,
    Param,
    ParamError,
    parse_format,
    parse_pairs_tuple,
    utc_naive,
)


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


def _keywords(name: str, words: tuple[str, ...]) -> Clause:
    # keyword_query (migration 0018) cuts the text as documents are cut; the words must stand in this order.
    negate = "NOT " if name == "not_keywords" else ""
    clauses, params = [], {}
    for n, value in enumerate(words):
        at = _key(name, f"_{n}")
        clauses.append(
            sql.SQL(
                negate + "EXISTS (SELECT 1 FROM image_words w WHERE w.image_id = i.id"
                " AND w.document @@ keyword_query({}, '<->'))"
            ).format(sql.Placeholder(at))
        )
        params[at] = value
    return sql.SQL(" AND ").join(clauses), params


def _words(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        if not any(ch.isalnum() for ch in value):
            raise InvalidInput(f"a keyword needs a letter or a digit, not {value!r}")
        if len(value) > MAX_KEYWORD:
            raise InvalidInput(f"a keyword has at most {MAX_KEYWORD} characters, not {len(value)}")
    return values


def _attributes(name: str, pairs: tuple[tuple[str, str], ...]) -> Clause:
    clauses, params = [], {}
    for n, (key, value) in enumerate(pairs):
        key_at, value_at = _key(name, f"_key_{n}"), _key(name, f"_value_{n}")
        clauses.append(sql.SQL("i.attributes ->> {} = {}").format(sql.Placeholder(key_at), sql.Placeholder(value_at)))
        params[key_at], params[value_at] = key, value
    return sql.SQL(" AND ").join(clauses), params


MAX_KEYWORD = 1000
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
            ("--format",), choices=FORMAT_CHOICES, case_sensitive=False, metavar="FORMAT", check=parse_format,
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
            multiple=True, parse=parse_pairs_tuple, clause=_attributes,
            api=Api(name="attr", description="KEY=VALUE, repeatable"),
        ),
        # The stored images a query is made of, left out of its results: set by the library, never typed.
        Param(
            "exclude", int, multiple=True, clause=_condition("i.id <> ALL({})", list), api=None,
        ),
        Param(
            "keywords", str, "Its words (file name, folders, attributes, caption, OCR text) hold this word or phrase;"
            " repeatable. In a query: kw:WORD or kw:\"A PHRASE\".", ("--keyword",), metavar="WORDS", multiple=True,
            check=_words, clause=_keywords, api=Api(name="keyword", description="word or phrase, repeatable"),
        ),
        Param(
            "not_keywords", str, "Its words do not hold this word or phrase; repeatable. In a query: -kw:WORD.",
            ("--not-keyword",), metavar="WORDS", multiple=True, check=_words, clause=_keywords,
            api=Api(name="not_keyword", description="word or phrase, repeatable"),
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
            raise ParamError("{after} must be earlier than {before}")
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
    """Every string in a filter value (tuples of pairs included): none may hold a NUL."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, tuple):
        return [text for item in value for text in _texts(item)]
    return []
