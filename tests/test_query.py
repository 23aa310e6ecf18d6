"""The query language parser: no database, no model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imagedb.errors import InvalidInput
from imagedb.query import parse, parse_string
from imagedb.request import Term


def test_terms_operators_and_weights(tmp_path: Path) -> None:
    shoe = tmp_path / "shoe.jpg"
    shoe.write_bytes(b"x")
    assert parse(["beach", "+", "sunset", "-", "people"]) == [
        Term("text", "beach", 1.0),
        Term("text", "sunset", 1.0),
        Term("text", "people", -1.0),
    ]
    assert parse(["2:red dress", "+", str(shoe), "-", "0.5:id:12"]) == [
        Term("text", "red dress", 2.0),
        Term("image", str(shoe), 1.0),
        Term("id", "12", -0.5),
    ]


def test_bare_words_form_one_text() -> None:
    assert parse(["a", "dog", "on", "a", "beach"]) == [Term("text", "a dog on a beach", 1.0)]
    assert parse(["red", "car", "-", "night", "time"]) == [
        Term("text", "red car", 1.0),
        Term("text", "night time", -1.0),
    ]


def test_parse_string_splits_like_a_shell() -> None:
    assert parse_string('2:"red dress" + "at night"') == [Term("text", "red dress", 2.0), Term("text", "at night", 1.0)]


@pytest.mark.parametrize(
    "tokens, message",
    [
        ([], "the query is empty"),
        (["+", "a"], "cannot start with '+'"),
        (["-", "a"], "cannot start with '-'"),
        (["a", "+"], "cannot end with an operator"),
        (["a", "+", "-", "b"], "two operators in a row"),
        (["0:a"], "weight must be above 0"),
        (["id:abc"], "id: needs a number"),
        (["id:\u00b2"], "id: needs a number"),  # a superscript two: a digit to str.isdigit(), not to int()
        (["id:1\u00b2"], "id: needs a number"),
        (["id:\u0661\u0662"], "id: needs a number"),  # Arabic-Indic digits
        (["id:3", "b"], "put + or - between"),
        (["./missing.jpg"], "no such image file"),
        (["holiday.png"], "no such image file"),
        (["2:"], "a term is empty"),
    ],
)
def test_malformed_queries(tokens: list[str], message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        parse(tokens)


def test_unbalanced_quotes() -> None:
    with pytest.raises(InvalidInput, match="cannot read the query"):
        parse_string('"red dress')


def test_a_bare_word_is_text_whatever_files_are_here(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A file named `sunset` in the current folder turned `imagedb search sunset` into an image
    search. Only a term that looks like an image path is tried as a file."""
    from imagedb.query import parse

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sunset").write_bytes(b"not a picture")
    (tmp_path / "dog").write_bytes(b"")
    assert [(t.kind, t.value) for t in parse(["sunset"])] == [("text", "sunset")]
    assert [(t.kind, t.value) for t in parse(["beach", "+", "dog"])] == [("text", "beach"), ("text", "dog")]
