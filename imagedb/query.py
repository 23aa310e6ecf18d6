"""The search query language: text, image files and stored images, added and subtracted with weights.

    beach + sunset - people          (shell: imagedb search beach + sunset - people)
    2:"red dress" + ./shoe.jpg       a weight W: before a term scales it
    id:123 - "text overlay"          a stored image by id
    receipt kw:invoice -kw:draft     keywords: the image's words must hold (kw:) or must not hold (-kw:) them;
    kw:"lisbon trip"                 a phrase: the words in this order (docs/keywords.md)

Tokens are what a shell passes as arguments; `parse_string` splits one string the way a shell would. Bare
words next to each other form one text ("a dog on a beach"), so quoting is optional.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from collections.abc import Sequence
from pathlib import Path

from imagedb.errors import InvalidInput
from imagedb.files import SUPPORTED_SUFFIXES
from imagedb.request import Term

_WEIGHT = re.compile(r"^([0-9]+(?:\.[0-9]+)?):(.*)$", re.S)  # ASCII digits: \d takes ² and ١ too
_ID = re.compile(r"^id:(.*)$", re.S)
_KEYWORD = re.compile(r"^(-?)kw:(.*)$", re.S)
# Weights are relative; beyond this a weight says nothing more, and a huge one overflows to infinity.
MAX_WEIGHT = 1000.0


def parse(tokens: Sequence[str], *, files: bool = True) -> list[Term]:
    """Terms of a query; raises InvalidInput, saying where, for anything malformed.

    files=False refuses image paths without looking at the filesystem: for queries from the network.
    """
    terms: list[Term] = []
    sign: float | None = 1.0  # None: an operator is required before the next term
    operator = False  # the last token was + or -
    merge_text = False  # the previous term is bare text that the next bare word extends
    for position, token in enumerate(tokens, start=1):
        if token in ("+", "-"):
            if sign is not None:
                where = "start with" if not terms else "have two operators in a row at"
                raise InvalidInput(f"a query cannot {where} {token!r} (term {position})")
            sign, merge_text, operator = (1.0 if token == "+" else -1.0), False, True
            continue
        if match := _KEYWORD.match(token):
            # A keyword is a condition, not a direction: it needs no operator, and - before it excludes.
            words = match.group(2).strip()
            if not any(ch.isalnum() for ch in words):
                raise InvalidInput(f"kw: needs a word (letters or digits), not {words!r} (term {position})")
            negative = match.group(1) == "-" or (operator and sign == -1.0)
            terms.append(Term("keyword", words, -1.0 if negative else 1.0))
            if operator:
                sign, operator = None, False
            merge_text = False
            continue
        weight, body = _weight(token)
        term = _term(body, weight, files)
        if sign is None:
            if merge_text and term.kind == "text" and weight is None:
                last = terms[-1]
                terms[-1] = Term("text", f"{last.value} {term.value}", last.weight)
                continue
            raise InvalidInput(f"put + or - between the terms {terms[-1].value!r} and {body!r}")
        terms.append(Term(term.kind, term.value, sign * term.weight))
        sign, merge_text, operator = None, term.kind == "text" and weight is None, False
    if not terms:
        raise InvalidInput("the query is empty: give a text, an image path or id:N")
    if operator:
        raise InvalidInput("a query cannot end with an operator")
    return terms


def parse_string(query: str, *, files: bool = True) -> list[Term]:
    try:
        return parse(shlex.split(query), files=files)
    except ValueError as exc:  # unbalanced quotes
        raise InvalidInput(f"cannot read the query: {exc}") from exc


def _weight(token: str) -> tuple[float | None, str]:
    match = _WEIGHT.match(token)
    if not match:
        return None, token
    weight = float(match.group(1))
    if not (math.isfinite(weight) and 0 < weight <= MAX_WEIGHT):
        shown = token if len(token) <= 40 else token[:37] + "..."
        raise InvalidInput(f"a weight must be above 0 and at most {MAX_WEIGHT:g}: {shown!r}")
    return weight, match.group(2)


def _term(body: str, weight: float | None, files: bool) -> Term:
    w = 1.0 if weight is None else weight
    if not body.strip():
        raise InvalidInput("a term is empty")
    if match := _ID.match(body):
        if not re.fullmatch(r"[0-9]+", match.group(1)):  # str.isdigit() takes ², which int() refuses
            raise InvalidInput(f"id: needs a number, not {match.group(1)!r}")
        return Term("id", match.group(1), w)
    if not files:
        if looks_like_path(body):
            raise InvalidInput(f"image paths are not accepted here ({body}): upload the image instead")
        return Term("text", body, w)
    if names_image(body):
        return Term("image", str(Path(body).expanduser()), w)
    if looks_like_path(body):
        raise InvalidInput(no_image_file(body))
    return Term("text", body, w)


def looks_like_path(text: str) -> bool:
    """An image file's name (by its suffix) or a path (./, ../, /, ~). A bare word never is: `sunset` stays a text
    even where a file of that name happens to be, so a file someone put in the current folder cannot turn a
    text query into an image query."""
    return Path(text).suffix.lower() in SUPPORTED_SUFFIXES or text.startswith(("./", "../", "/", "~", f".{os.sep}"))


def names_image(text: str) -> bool:
    """Whether a query term is an image file: it looks like a path and the file exists."""
    return looks_like_path(text) and is_file(text)


def is_file(text: str | Path) -> bool:
    """Whether `text` names a readable file; False for text that cannot be a path at all: a component over 255
    bytes (ENAMETOOLONG), a NUL character, or "~someone" with no such user."""
    try:
        return Path(text).expanduser().is_file()
    except (OSError, RuntimeError, ValueError):
        return False


def no_image_file(text: str | Path) -> str:
    """Why `text` is no image file to read, as a one-line error says it: a folder, something that is not a
    regular file (a device, a FIFO, a socket), or nothing at all."""
    try:
        path = Path(text).expanduser()
        if path.is_dir():
            return f"{text} is a folder: give an image file"
        if path.exists():
            return f"{text} is not a regular file: give an image file"
    except (OSError, RuntimeError, ValueError):  # text that cannot be a path at all (as is_file)
        pass
    return f"no such image file: {text}"
