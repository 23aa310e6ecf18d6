"""What a newcomer meets in the CLI, and output that scripts consume: escaped paths, NUL-separated paths,
one-line errors with the subcommand's usage, help without cut-off lines, strict metadata files, dates in UTC."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from imagedb.attributes import read_rows, tag
from imagedb.cli import main, query_terms
from imagedb.display import escape, iso
from imagedb.embed import ModelSpec
from imagedb.errors import InvalidInput
from imagedb.ingest import ingest
from imagedb.query import parse_string
from imagedb.store import Store

NEWLINE_NAME = "x\nimportant.jpg"
ODD_NAMES = (NEWLINE_NAME, "tab\there.jpg", "back\\slash.jpg", "esc\x1b[31mred.jpg", "rtl\u202egpj.exe.jpg")


@pytest.fixture
def cli(database_url: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    monkeypatch.delenv("IMAGEDB_MODEL", raising=False)

    def invoke(*args: object, input: str | None = None) -> Result:
        return CliRunner().invoke(main, [str(a) for a in args], input=input, prog_name="imagedb")

    return invoke


@pytest.fixture
def odd(store: Store, photos: Path, tiny_model: str) -> Path:
    """The photos, plus copies of coffee.jpg under names with a newline, a tab, a backslash, ESC and U+202E."""
    for name in ODD_NAMES:
        shutil.copy(photos / "coffee.jpg", photos / name)
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    return photos


def _one_line_error(result: Result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, result.output
    return error_lines[0]


# -- 1. escaping and --null ------------------------------------------------------------------------------------


def test_escape_is_c_style_and_one_line() -> None:
    assert escape("a\nb\tc\rd") == "a\\nb\\tc\\rd"
    assert escape("back\\slash") == "back\\\\slash"
    assert escape("\x1b[31m\x00\x7f") == "\\x1b[31m\\x00\\x7f"
    assert escape("rtl\u202eexe \u2028 \x85") == "rtl\\u202eexe \\u2028 \\u0085"
    assert escape("bad\udcffbyte") == "bad\\xffbyte"  # os.fsdecode's surrogate for the byte 0xff
    assert escape("ünïcødé 写真 ok.jpg") == "ünïcødé 写真 ok.jpg"


def test_search_paths_are_escaped_and_null_gives_the_raw_bytes(cli, odd: Path) -> None:  # type: ignore[no-untyped-def]
    stored = {str(odd / name) for name in ODD_NAMES}
    raw = cli("search", "--image", odd / "coffee.jpg", "-k", "6", "--null")
    assert raw.exit_code == 0, raw.output
    found = raw.stdout_bytes.split(b"\0")
    assert found[-1] == b"" and stored <= {p.decode() for p in found[:-1]}

    paths = cli("search", "--image", odd / "coffee.jpg", "-k", "6", "--paths")
    lines = paths.stdout.splitlines()
    assert len(lines) == 6 and {escape(p) for p in stored} <= set(lines)
    assert str(odd / "x\\nimportant.jpg") in lines and str(odd / "back\\\\slash.jpg") in lines
    assert not any("\x1b" in line or "\u202e" in line for line in lines)

    table = cli("search", "--image", odd / "coffee.jpg", "-k", "6").stdout.splitlines()
    assert len(table) == 7 and any(line.endswith(str(odd / "x\\nimportant.jpg")) for line in table)


@pytest.mark.slow
def test_other_commands_escape_the_paths_they_print(cli, odd: Path) -> None:  # type: ignore[no-untyped-def]
    dupes = cli("dupes")
    assert dupes.exit_code == 0, dupes.output
    assert str(odd / "x\\nimportant.jpg") in dupes.stdout and NEWLINE_NAME not in dupes.stdout

    added = cli("watch", "add", odd / NEWLINE_NAME, "--label", "line\nbreak")
    assert added.exit_code == 0, added.output
    assert added.stdout.splitlines()[1].startswith(f"  watch 1: {odd}/x\\nimportant.jpg  ")
    listed = cli("watch", "list").stdout.splitlines()
    assert len(listed) == 1 and "line\\nbreak" in listed[0] and listed[0].endswith("x\\nimportant.jpg")

    tagged = cli("tag", NEWLINE_NAME, "k=v")
    assert tagged.exit_code == 0 and tagged.stdout.splitlines()[1].endswith(f"{odd}/x\\nimportant.jpg")

    forgot = cli("forget", odd / NEWLINE_NAME, "--yes")
    assert forgot.exit_code == 0, forgot.output
    assert forgot.stdout.splitlines()[1].endswith(f"{odd}/x\\nimportant.jpg")


def test_an_error_that_quotes_a_file_name_stays_on_one_line(cli, odd: Path) -> None:  # type: ignore[no-untyped-def]
    line = _one_line_error(cli("watch", "add", odd / "no\nsuch.jpg"))
    assert "no\\nsuch.jpg" in line


# -- 2. metadata files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, suffix, message",
    [
        (b"filename,note\na.jpg," + b"x" * 140_000 + b"\n", ".csv", "line 2: a field is longer than 131,072"),
        (b'{"filename": "a.jpg", "note": "' + b"x" * 140_000 + b'"}\n', ".jsonl", "line 1: a key or value is longer"),
        (b"filename,note\na.jpg,ok\nb.jpg,caf\xe9\n", ".csv", "line 3: not valid UTF-8"),
        (b'{"filename": "a.jpg", "note": "caf\xe9"}\n', ".jsonl", "line 1: not valid UTF-8"),
        (b'{"filename": "a.jpg", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", ".jsonl", "nested deeper than 32"),
        (b'{"filename": "a.jpg", "x": ' + b"[" * 40 + b"]" * 40 + b"}\n", ".jsonl", "line 1: nested deeper than 32"),
        (b"filename,note\na.jpg,a\x00b\n", ".csv", "line 2: a NUL character"),
        (b'{"filename": "a.jpg", "note\\u0000": 1}\n', ".jsonl", "line 1: a NUL character"),
        (b'{"filename": "a.jpg", "x": "\\ud800"}\n', ".jsonl", "is not a Unicode character"),
        (b'{"filename": "a.jpg", "x": NaN}\n', ".jsonl", "line 1: NaN is not a number"),
        (b'{"filename": "a.jpg", "x": -Infinity}\n', ".jsonl", "-Infinity is not a number"),
        (b'{"filename": "a.jpg", "x": 1e400}\n', ".jsonl", "line 1: 1e400 is too large"),
        (b'{"filename": "a.jpg", "x": ' + b"9" * 5000 + b"}\n", ".jsonl", "line 1: a number has too many digits"),
        (b"filename,sku,filename\na.jpg,1,b.jpg\n", ".csv", "line 1: the column 'filename' appears twice"),
        (b'{"filename": "a.jpg", "filename": "b.jpg"}\n', ".jsonl", "the key 'filename' appears twice"),
        (b"filename,sku\na.jpg,1,extra\n", ".csv", "line 2: 3 fields, but the header has 2"),
        (
            b'filename,sku\na.jpg,1\n"b.jpg","multi\nline"\na.jpg,2\n',
            ".csv",
            "line 5: filename 'a.jpg' is already on line 2",
        ),
        (b'{"filename": ["a.jpg"]}\n', ".jsonl", "the 'filename' value must be a text"),
    ],
)
def test_bad_metadata_is_refused_with_file_and_line(tmp_path: Path, content: bytes, suffix: str, message: str) -> None:
    bad = tmp_path / f"meta{suffix}"
    bad.write_bytes(content)
    with pytest.raises(InvalidInput, match="^meta") as raised:
        read_rows(bad)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_bad_metadata_fails_first_in_the_cli(cli, photos: Path, tiny_model: str, tmp_path: Path, store: Store) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "meta.jsonl"
    bad.write_text('{"filename": "coffee.jpg", "x": NaN}\n')
    line = _one_line_error(cli("ingest", photos, "-m", tiny_model, "--metadata", bad))
    assert "meta.jsonl, line 1: NaN" in line
    assert store.conn.execute("SELECT count(*) FROM images").fetchone()[0] == 0


def test_good_metadata_still_reads(tmp_path: Path) -> None:
    good = tmp_path / "meta.csv"
    good.write_bytes(b'\xef\xbb\xbffilename,note,size\r\na.jpg,"two\nlines",3\r\nb.jpg,short\r\n')
    assert read_rows(good) == [("a.jpg", {"note": "two\nlines", "size": "3"}), ("b.jpg", {"note": "short"})]
    nested = tmp_path / "meta.jsonl"
    nested.write_text(json.dumps({"path": "sub/c.jpg", "x": [[{"y": 1.5}]], "u": "\u2028 ok"}) + "\n")
    assert read_rows(nested) == [(str(tmp_path / "sub" / "c.jpg"), {"x": [[{"y": 1.5}]], "u": "\u2028 ok"})]


@pytest.mark.slow
def test_tag_refuses_nul(cli, odd: Path, store: Store) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput, match="NUL"):
        tag(store, "default", "coffee.jpg", {"k": "a\x00b"})
    assert "NUL" in _one_line_error(cli("tag", "coffee.jpg", "k\x00=v"))


# -- 3. one quoted argument is the query language --------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "beach + sunset - people",
        "a dog on a beach",
        '2:"red dress" - 0.5:blue',
        'id:12 + "C++ code"',
        '"A + B"',
        "C++",
        "a child\\'s drawing",
    ],
)
def test_one_argument_parses_as_the_api_parses(query: str) -> None:
    assert query_terms((query,), (), ()) == parse_string(query, files=False)


@pytest.mark.slow
def test_one_argument_in_the_cli(cli, odd: Path) -> None:  # type: ignore[no-untyped-def]
    assert "cannot end with an operator" in _one_line_error(cli("search", "dog +"))
    assert "two operators in a row" in _one_line_error(cli("search", "dog + - cat"))
    assert "No closing quotation" in _one_line_error(cli("search", '"dog'))
    assert cli("search", "beach + sunset - people", "--json").exit_code == 0
    long_text = "a very long description of a photo " * 10  # over 255 bytes: no file name can be that long
    assert cli("search", long_text, "--json").exit_code == 0
    assert cli("search", *long_text.split(), "--json").exit_code == 0
    spaced = odd / "with space.jpg"
    shutil.copy(odd / "coffee.jpg", spaced)
    found = cli("search", spaced, "-k", "1", "--json")  # one argument naming a file is that image
    assert found.exit_code == 0, found.output


# -- 4. help and usage lines ------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["--help"], ["db", "--help"], ["watch", "--help"], ["search", "--help"]])
def test_help_is_not_cut_short(args: list[str]) -> None:
    result = CliRunner().invoke(main, args, terminal_width=60)
    assert result.exit_code == 0
    assert [line for line in result.output.splitlines() if "..." in line and not line.startswith("Usage:")] == []


def test_help_shows_examples_dates_and_sort() -> None:
    top = CliRunner().invoke(main, ["--help"]).output
    assert "Examples:" in top and "imagedb search" in top.split("Examples:")[1]
    search_help = CliRunner().invoke(main, ["search", "--help"]).output
    assert "--after DATE" in search_help and "%Y" not in search_help
    assert "Order of the best matches" in search_help


@pytest.mark.parametrize(
    "args, usage",
    [
        (["search", "dog +"], "Usage: imagedb search [OPTIONS] [QUERY]..."),
        (["watch", "add", "/no/such.jpg"], "Usage: imagedb watch add [OPTIONS] PATHS..."),
        (["tag", "x.jpg", "novalue"], "Usage: imagedb tag [OPTIONS] IMAGE KEY=VALUE..."),
    ],
)
def test_errors_show_the_usage_of_the_command_that_was_run(cli, args: list[str], usage: str) -> None:  # type: ignore[no-untyped-def]
    result = cli(*args)
    assert result.exit_code == 2 and result.output.startswith(usage), result.output
    assert "COMMAND [ARGS]" not in result.output


# -- 5. refused at parse time -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "psd"], "Invalid value for '--format'"),
        (["--json", "--paths"], "--json and --paths cannot be used together"),
        (["--null", "--json"], "--json and --null cannot be used together"),
        (["-0", "--paths"], "--paths and --null cannot be used together"),
    ],
)
def test_bad_output_and_format_options_are_refused_before_the_database(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", f"postgresql://postgres@/imagedb?host={tmp_path}")  # nothing there
    assert message in _one_line_error(CliRunner().invoke(main, ["search", "x", *args]))


@pytest.mark.parametrize("fmt", ["jpg", "JPEG", "tif", "Png", "heif", "AVIF"])
def test_known_formats_in_any_case_are_accepted(cli, odd: Path, fmt: str) -> None:  # type: ignore[no-untyped-def]
    result = cli("search", "x", "--format", fmt, "--json")
    assert result.exit_code == 0, result.output
    if fmt.upper() in ("JPG", "JPEG"):
        assert len(result.output.splitlines()) == 10


# -- 6. forget names the files first; watch add names them too ---------------------------------------------------


def test_forget_lists_the_files_before_asking(cli, odd: Path, store: Store) -> None:  # type: ignore[no-untyped-def]
    refused = cli("forget", "coffee.jpg", "rocket.jpg", "nothing-here.jpg", input="n\n")
    assert refused.exit_code == 1 and "Aborted" in refused.output
    assert "2 image(s) in collection default:" in refused.output
    assert str(odd / "coffee.jpg") in refused.output and str(odd / "rocket.jpg") in refused.output
    assert "not found: nothing-here.jpg" in refused.output
    assert store.conn.execute("SELECT count(*) FROM images").fetchone()[0] == 12 + len(ODD_NAMES)

    names = sorted(p.name for p in odd.iterdir() if "\n" not in p.name)
    many = cli("forget", *names, "--yes")
    assert many.exit_code == 0, many.output
    assert f"and {len(names) - 10} more" in many.output and f"forgot {len(names)} image(s)" in many.output


# -- 7. dates -------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dates_are_iso_8601_in_utc_everywhere(cli, odd: Path) -> None:  # type: ignore[no-untyped-def]
    row = json.loads(cli("search", "x", "-k", "1", "--json").stdout)
    assert row["date"].endswith("Z") and datetime.fromisoformat(row["date"].replace("Z", "+00:00")).tzinfo
    assert iso(datetime(2024, 5, 1, 10, 0)) == "2024-05-01T10:00:00Z"  # EXIF local time, counted as UTC
    assert cli("watch", "add", odd / "rocket.jpg").exit_code == 0
    shutil.copy(odd / "rocket.jpg", odd / "rocket-copy.jpg")
    assert cli("ingest", odd).exit_code == 0
    hits = cli("watch", "hits", "--json").stdout.splitlines()
    assert hits and all(json.loads(h)["found_at"].endswith("Z") for h in hits)


# -- 8. IMAGEDB_MODEL is for new collections -------------------------------------------------------------------------


@pytest.mark.slow
def test_imagedb_model_applies_only_to_new_collections(  # type: ignore[no-untyped-def]
    cli, odd: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEDB_MODEL", "ViT-B-32:/no/such/checkpoint.pt")
    assert cli("search", "x", "--json").exit_code == 0
    assert cli("ingest", odd).exit_code == 0
    # An explicit --model of another model is still refused, as bad usage.
    line = _one_line_error(cli("search", "x", "--model", "ViT-B-32:/no/such/checkpoint.pt"))
    assert "holds no model" in line
    # A new collection takes the variable's model.
    monkeypatch.setenv("IMAGEDB_MODEL", tiny_model)
    assert cli("ingest", odd / "coffee.jpg", "-c", "fresh").exit_code == 0
    assert f"model {ModelSpec.parse(tiny_model)}" in cli("db", "info").output.split("collection fresh:")[1]
