"""A folder holding every kind of directory entry: ingest stores the photos, records the rest, never hangs.

The CLI runs in a subprocess with a timeout, since the failures this guards against are a hang (a FIFO), memory
without bound (/dev/zero) and a crash on a file name that is not UTF-8.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from imagedb.embed import ModelSpec
from imagedb.files import MAX_FILE_BYTES, BadImage, read_regular_file, readable
from imagedb.images import decode
from imagedb.ingest import ingest
from imagedb.store import Store

TIMEOUT_S = 120


def _imagedb() -> str:
    found = shutil.which("imagedb", path=str(Path(sys.executable).parent)) or shutil.which("imagedb")
    assert found, "the imagedb console script is not installed"
    return found


def _photo(path: Path | bytes, colour: tuple[int, int, int]) -> None:
    image = Image.new("RGB", (80, 60), colour)
    if isinstance(path, bytes):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        with os.fdopen(fd, "wb") as file:
            image.save(file, "JPEG")
    else:
        image.save(path)


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[tuple[Path, set[str], dict[str, str]]]:
    """(folder, names that must be stored, readable path suffix -> a word of the recorded reason)."""
    folder = tmp_path / "hostile"
    folder.mkdir()
    good = {"a.jpg", "b.png", "new\nline.jpg", "d.jpg/inside.jpg"}
    _photo(folder / "a.jpg", (200, 20, 20))
    _photo(folder / "b.png", (20, 200, 20))
    _photo(folder / "new\nline.jpg", (20, 20, 200))
    (folder / "d.jpg").mkdir()  # a folder with an image name: walked into, like any folder
    _photo(folder / "d.jpg" / "inside.jpg", (200, 200, 20))
    bad = {}
    _photo(os.fsencode(folder) + b"/caf\xe9.jpg", (90, 90, 90))  # Latin-1 name: not UTF-8
    bad["caf\\xe9.jpg"] = "file name is not valid UTF-8"
    os.mkdir(os.fsencode(folder) + b"/old\xff")
    _photo(os.fsencode(folder) + b"/old\xff/in-bad-folder.jpg", (9, 9, 9))
    bad["old\\xff/in-bad-folder.jpg"] = "folder name is not valid UTF-8"
    os.mkfifo(folder / "x.jpg")
    bad["x.jpg"] = "FIFO"
    os.symlink("/dev/zero", folder / "z.jpg")
    bad["z.jpg"] = "character device"
    os.symlink("/dev/urandom", folder / "u.png")
    bad["u.png"] = "character device"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "s.jpg"))
    bad["s.jpg"] = "socket"
    (folder / "empty.jpg").write_bytes(b"")
    bad["empty.jpg"] = "empty file"
    (folder / "text\nfile.jpg").write_text("not an image")
    bad["text\nfile.jpg"] = "not an image"
    os.symlink(folder / "gone.jpg", folder / "dangling.jpg")
    bad["dangling.jpg"] = "cannot read"
    try:
        yield folder, good, bad
    finally:
        server.close()


def _ingest_cli(folder: Path | str, database_url: str, tiny_model: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IMAGEDB_DATABASE_URL": database_url, "IMAGEDB_MODEL": tiny_model}
    return subprocess.run(
        [_imagedb(), "ingest", str(folder)], env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )


@pytest.mark.slow
def test_every_kind_of_entry_is_stored_or_recorded_and_reruns_complete(
    store: Store, database_url: str, tiny_model: str, hostile: tuple[Path, set[str], dict[str, str]]
) -> None:
    folder, good, bad = hostile
    run = _ingest_cli(folder, database_url, tiny_model)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    failed = [line for line in run.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed) == len(bad), run.stderr  # one line each, a newline in a name included
    assert f"failed {len(bad)}" in run.stdout and f"added {len(good)}" in run.stdout
    errors = store.conn.execute(
        "SELECT path, reason FROM ingest_errors WHERE run_id = (SELECT max(run_id) FROM ingest_errors)"
    ).fetchall()
    # A rerun completes as well; what failed and has not changed is not tried again, except the dangling link,
    # which has no size or mtime to compare.
    rerun = _ingest_cli(folder, database_url, tiny_model)
    assert rerun.returncode == 0 and "Traceback" not in rerun.stderr, rerun.stderr
    assert f"skipped {len(good)} unchanged, failed 1," in rerun.stdout, rerun.stdout
    assert f"{len(bad) - 1} failed before and unchanged" in rerun.stdout, rerun.stdout
    stored = {p for (p,) in store.conn.execute("SELECT path FROM images").fetchall()}
    assert stored == {str(folder / name) for name in good}
    recorded = {path[len(str(folder)) + 1 :]: reason for path, reason in errors}
    assert recorded.keys() == bad.keys()
    for name, reason in recorded.items():
        assert bad[name] in reason, (name, reason)
    assert "rename it" in recorded["caf\\xe9.jpg"]


@pytest.mark.slow
def test_a_fifo_or_device_given_by_name_does_not_hang(
    database_url: str, tiny_model: str, hostile: tuple[Path, set[str], dict[str, str]]
) -> None:
    folder, _, _ = hostile
    for name in ("x.jpg", "z.jpg"):
        run = _ingest_cli(folder / name, database_url, tiny_model)
        assert run.returncode == 0, run.stderr
        assert "not a regular file" in run.stderr and "failed 1" in run.stdout


def test_a_missing_path_with_a_non_utf8_name_is_one_readable_line(database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "IMAGEDB_DATABASE_URL": database_url}
    missing = os.fsencode(tmp_path) + b"/nope\xff"
    run = subprocess.run([_imagedb(), "ingest", missing], env=env, capture_output=True, timeout=TIMEOUT_S)
    assert run.returncode != 0 and b"Traceback" not in run.stderr
    assert b"no such file or folder" in run.stderr and b"nope\\xff" in run.stderr


def test_the_library_records_the_same_without_the_cli(
    store: Store, tiny_model: str, hostile: tuple[Path, set[str], dict[str, str]]
) -> None:
    folder, good, bad = hostile
    summary = ingest(store, [folder], model=ModelSpec.parse(tiny_model))
    assert (summary.added + summary.reused, summary.failed) == (len(good), len(bad))
    for path, reason in summary.errors:
        assert readable(path) == path and readable(reason) == reason  # printable and storable as they are


def test_files_over_the_size_cap_are_refused_unread(tmp_path: Path) -> None:
    sparse = tmp_path / "huge.png"
    with open(sparse, "wb") as file:
        file.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk space used
    with pytest.raises(BadImage, match=f"larger than {MAX_FILE_BYTES // 2**20} MiB"):
        decode(sparse)
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 100)
    with pytest.raises(BadImage, match="larger than 0 MiB"):
        read_regular_file(small, max_bytes=99)
    assert read_regular_file(small, max_bytes=100)[0] == b"x" * 100


def test_a_directory_given_to_decode_is_named(tmp_path: Path) -> None:
    with pytest.raises(BadImage, match="a directory, not a regular file"):
        decode(tmp_path)


def test_a_symlink_out_of_the_folder_is_not_followed(store: Store, tiny_model: str, tmp_path: Path) -> None:
    """A link in a shared folder to the ingesting user's private photo was stored, and
    `imagedb serve` then handed it out. Links that stay inside the folders given are followed as before."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    Image.new("RGB", (64, 48), (10, 200, 10)).save(private / "secret.jpg")
    shared = tmp_path / "shared"
    shared.mkdir()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(shared / "own.jpg")
    (shared / "innocent.jpg").symlink_to(private / "secret.jpg")
    (shared / "again.jpg").symlink_to(shared / "own.jpg")  # inside: fine
    summary = ingest(store, [shared], model=ModelSpec.parse(tiny_model))
    stored = {Path(p).name for (p,) in store.conn.execute("SELECT path FROM images").fetchall()}
    assert stored == {"own.jpg", "again.jpg"}
    assert [(Path(p).name, "outside the folders given" in r) for p, r in summary.errors] == [("innocent.jpg", True)]
    # Named on the command line, a link is the user's own choice: it is read.
    named = ingest(store, [shared / "innocent.jpg"])
    assert (named.added + named.reused, named.failed) == (1, 0)


@pytest.fixture
def deep(tmp_path: Path) -> Iterator[Path]:
    """A folder with a photo at the top and 2,500 nested folders below; removed again by a loop, since Python's
    own recursive rmtree (pytest's cleanup of old temporary folders included) fails on it too."""
    top = tmp_path / "deep"
    top.mkdir()
    Image.new("RGB", (64, 48), (10, 10, 200)).save(top / "top.jpg")
    depth = 2500
    descriptor = os.open(top, os.O_RDONLY)
    try:  # relative to an open folder: the full path would pass PATH_MAX long before the depth matters
        for _ in range(depth):
            os.mkdir("a", dir_fd=descriptor)
            inner = os.open("a", os.O_RDONLY, dir_fd=descriptor)
            os.close(descriptor)
            descriptor = inner
    finally:
        os.close(descriptor)
    yield top
    # Unnest from the top: move a/a up beside a, remove the emptied a, and repeat.
    while (top / "a").exists():
        if (top / "a" / "a").exists():
            (top / "a" / "a").rename(top / "b")
            (top / "a").rmdir()
            (top / "b").rename(top / "a")
        else:
            (top / "a").rmdir()


@pytest.mark.slow
def test_a_folder_nested_thousands_deep_does_not_stop_the_run(store: Store, tiny_model: str, deep: Path) -> None:
    """os.walk recursed, and 1,900 nested folders ended every ingest of the folder with a
    RecursionError traceback, storing nothing."""
    summary = ingest(store, [deep], model=ModelSpec.parse(tiny_model))
    assert summary.added == 1 and summary.failed == 0
