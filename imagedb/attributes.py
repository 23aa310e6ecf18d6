"""User attributes (sku, category, label...): from a CSV or JSON Lines file at ingest, or set one by one."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from imagedb import collection as collections
from imagedb.errors import InvalidInput, NotFound
from imagedb.store import Store

KEY_COLUMNS = ("path", "filename")


def read_rows(file: Path) -> list[tuple[str, dict[str, Any]]]:
    """(key, attributes) per row. A key with a folder is made absolute against the file's own folder;
    a bare file name stays bare and matches images by name."""
    if not file.is_file():
        raise NotFound(f"no such metadata file: {file}")
    suffix = file.suffix.lower()
    if suffix == ".csv":
        records = _csv(file)
    elif suffix in (".jsonl", ".ndjson", ".json"):
        records = _json_lines(file)
    else:
        raise InvalidInput(f"metadata must be .csv or .jsonl (JSON Lines), not {file.name}")
    rows = []
    for line, record in records:
        key_column = next((c for c in KEY_COLUMNS if record.get(c) not in (None, "")), None)
        if key_column is None:
            raise InvalidInput(f"{file.name}, line {line}: no 'path' or 'filename' value")
        key = str(record.pop(key_column))
        for column in KEY_COLUMNS:
            record.pop(column, None)
        if "/" in key:
            key = str((file.parent / key).expanduser().resolve())
        rows.append((key, record))
    return rows


def _csv(file: Path) -> list[tuple[int, dict[str, Any]]]:
    with file.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not set(KEY_COLUMNS) & set(reader.fieldnames):
            raise InvalidInput(f"{file.name}: the header needs a 'path' or 'filename' column")
        # Line numbers count the header as line 1, as a spreadsheet shows them.
        return [(n, {k: v for k, v in row.items() if k is not None}) for n, row in enumerate(reader, start=2)]


def _json_lines(file: Path) -> list[tuple[int, dict[str, Any]]]:
    records = []
    with file.open(encoding="utf-8") as handle:
        for n, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"{file.name}, line {n}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise InvalidInput(f"{file.name}, line {n}: each line must be a JSON object")
            records.append((n, record))
    return records


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    """key=value arguments as a dict; raises InvalidInput for one without '=' or with an empty key."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"expected key=value, not {pair!r}")
        out[key.strip()] = value
    return out


def tag(store: Store, collection: str, ref: str, attributes: dict[str, Any]) -> list[int]:
    """Merge attributes into the image named by id, path or file name; returns the ids changed."""
    target = collections.get(store, collection)
    ref = str(Path(ref).expanduser().resolve()) if "/" in ref else ref
    ids = store.image_ids(target.id, ref)
    if not ids:
        raise NotFound(f"no image {ref!r} in collection {collection!r}: give an id, a path or a file name")
    store.merge_attributes(ids, attributes)
    return ids
