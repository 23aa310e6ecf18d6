"""User attributes (sku, category, label...): from a CSV or JSON Lines file at ingest, or set one by one."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from imagedb.collection import absolute_ref, get_collection
from imagedb.errors import InvalidInput, NotFound
from imagedb.store import Store

KEY_COLUMNS = ("path", "filename")


# Limits a metadata file must respect; a file that breaks one is refused before anything is stored.
MAX_DEPTH = 32  # nesting of JSON arrays and objects
MAX_TEXT = csv.field_size_limit()  # a JSON key or value, as long as a CSV field may be (131,072 characters)


def read_rows(file: Path) -> list[tuple[str, dict[str, Any]]]:
    """(key, attributes) per row. A key with a folder is made absolute against the file's own folder;
    a bare file name stays bare and matches images by name.

    The whole file is checked here, before ingest stores anything: each problem raises InvalidInput naming the
    file and line (invalid UTF-8, a CSV field or JSON key or value over csv's limit of 131,072 characters, JSON
    nested deeper than 32, NUL characters, NaN or infinite numbers, duplicate columns or keys, two rows for the same
    image).
    """
    if not file.is_file():
        raise NotFound(f"no such metadata file: {file}")
    suffix = file.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson", ".json"):
        raise InvalidInput(f"metadata must be .csv or .jsonl (JSON Lines), not {file.name}")
    text = _text(file)
    records = _csv(file, text) if suffix == ".csv" else _json_lines(file, text)
    rows = []
    first_line: dict[str, int] = {}
    for line, record in records:
        where = f"{file.name}, line {line}"
        _check_value(record, where)
        key_column = next((c for c in KEY_COLUMNS if record.get(c) not in (None, "")), None)
        if key_column is None:
            raise InvalidInput(f"{where}: no 'path' or 'filename' value")
        raw_key = record.pop(key_column)
        if not isinstance(raw_key, (str, int)) or isinstance(raw_key, bool):
            raise InvalidInput(f"{where}: the {key_column!r} value must be a text")
        key = str(raw_key)
        for column in KEY_COLUMNS:
            record.pop(column, None)
        if "/" in key:
            key = str((file.parent / key).expanduser().resolve())
        # Two rows for one image would both update it, in no defined order: the file is ambiguous.
        if key in first_line:
            raise InvalidInput(f"{where}: {key_column} {key!r} is already on line {first_line[key]}")
        first_line[key] = line
        rows.append((key, record))
    return rows


def _text(file: Path) -> str:
    data = file.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InvalidInput(f"{file.name}, line {line}: not valid UTF-8 (save the file as UTF-8)") from exc


def _csv(file: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if not header or not set(KEY_COLUMNS) & set(header):
            raise InvalidInput(f"{file.name}: the header needs a 'path' or 'filename' column")
        seen: set[str] = set()
        for column in header:
            if column in seen:
                raise InvalidInput(f"{file.name}, line 1: the column {column!r} appears twice in the header")
            seen.add(column)
        records = []
        for fields in reader:
            # reader.line_num is the file's line where this record ends: right even with multi-line fields.
            if len(fields) > len(header):
                raise InvalidInput(
                    f"{file.name}, line {reader.line_num}: {len(fields)} fields, but the header has {len(header)}"
                )
            if fields:
                records.append(
                    (reader.line_num, dict(zip(header, fields, strict=False)))
                )  # a short row lacks the last columns
        return records
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            message = f"a field is longer than {csv.field_size_limit():,} characters"
        else:
            message = f"not valid CSV ({exc})"
        raise InvalidInput(f"{file.name}, line {reader.line_num}: {message}") from exc


def _json_lines(file: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    records = []
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(
                line, object_pairs_hook=_unique_keys, parse_constant=_no_constant, parse_float=_finite_float
            )
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{file.name}, line {n}: not valid JSON ({exc.msg})") from exc
        except RecursionError as exc:
            raise InvalidInput(f"{file.name}, line {n}: nested deeper than {MAX_DEPTH} levels") from exc
        except ValueError as exc:  # raised by the hooks below, or by an integer of more than 4300 digits
            message = "a number has too many digits" if "integer string conversion" in str(exc) else str(exc)
            raise InvalidInput(f"{file.name}, line {n}: {message}") from exc
        if not isinstance(record, dict):
            raise InvalidInput(f"{file.name}, line {n}: each line must be a JSON object")
        records.append((n, record))
    return records


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice in one object")
        out[key] = value
    return out


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number PostgreSQL's jsonb can store")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text[:40]} is too large for a number PostgreSQL's jsonb can store")
    return value


def _check_value(value: Any, where: str, depth: int = 0) -> None:
    """Refuses what PostgreSQL's jsonb or text cannot hold, and nesting past MAX_DEPTH."""
    if depth > MAX_DEPTH:
        raise InvalidInput(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        _check_text(value, where)
    elif isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(f"{where}: {value} is not a number PostgreSQL's jsonb can store")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, where)
            _check_value(item, where, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_value(item, where, depth + 1)


def _check_text(text: str, where: str) -> None:
    if len(text) > MAX_TEXT:
        raise InvalidInput(f"{where}: a key or value is longer than {MAX_TEXT:,} characters")
    if "\x00" in text:
        raise InvalidInput(f"{where}: a NUL character is not allowed in a key or value")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate from a JSON \\udXXX escape
        raise InvalidInput(f"{where}: {exc.object[exc.start : exc.end]!r} is not a Unicode character") from exc


def tag(store: Store, collection: str, ref: str, attributes: dict[str, Any]) -> list[int]:
    """Merge attributes into the image named by id, path or file name; returns the ids changed."""
    _check_value({ref: attributes}, "imagedb tag")  # PostgreSQL's text and jsonb cannot hold NUL
    target = get_collection(store, collection)
    ref = absolute_ref(ref)
    ids = store.images.image_ids(target.id, ref)
    if not ids:
        raise NotFound(f"no image {ref!r} in collection {collection!r}: give an id, a path or a file name")
    store.images.merge_attributes(ids, attributes)
    return ids
