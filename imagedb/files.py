"""Finding image files under the paths given, and reading each one safely: never blocking, never too much."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from imagedb import dicom
from imagedb.errors import NotFound

SUPPORTED_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)
# DICOM files are found by these names too, and by the "DICM" magic in files without a suffix (dicom.has_preamble).
SUPPORTED_SUFFIXES |= dicom.DICOM_SUFFIXES
# Files above this size are refused unread: far above any real photo (a 100 MP camera writes ~40 MB JPEGs,
# ~200 MB 16-bit TIFFs), low enough that a few decode workers cannot exhaust memory on file bytes alone.
MAX_FILE_BYTES = 256 * 2**20

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class BadImage(Exception):
    """A file that cannot be stored; the message is the reason recorded in ingest_errors."""


def readable(text: str | os.PathLike[str]) -> str:
    """A path or message safe to print and store: bytes of a non-UTF-8 name as \\xNN, instead of surrogates.

    Python hands such names over with surrogateescape; psycopg and click refuse to encode them.
    """
    text = os.fspath(text)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape") if _only_escapes(text) else text.encode("utf-8", "replace")
        return raw.decode("utf-8", "backslashreplace")


def _only_escapes(text: str) -> bool:
    # surrogateescape can turn back only U+DC80..U+DCFF; any other lone surrogate came from elsewhere.
    return all(not "\ud800" <= c <= "\udfff" or "\udc80" <= c <= "\udcff" for c in text)


def check_paths(paths: Iterable[str | os.PathLike[str]]) -> None:
    """NotFound for a path that does not exist: cheap, so the CLI can say so before starting anything."""
    for given in paths:
        if not os.path.lexists(Path(given).expanduser()):
            raise NotFound(f"no such file or folder: {readable(given)}")


def find_images(paths: Iterable[str | os.PathLike[str]], on_found: Callable[[int], None] | None = None) -> list[Path]:
    """Every image file under the given files and folders (recursive), absolute and sorted, without repeats.

    Entries are only listed here, never opened: decode() decides what each one is. Folders are walked
    without following symlinks; `on_found(n)` is told of each folder's images as they are found.
    """
    check_paths(paths)
    found: set[Path] = set()
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            for folder, files in _walk(path):
                here = {Path(folder, f).absolute() for f in files if _wanted(Path(folder, f))}
                found.update(here)
                if on_found and here:
                    on_found(len(here))
        else:
            found.add(path.absolute())
            if on_found:
                on_found(1)
    return sorted(found)


def _walk(top: Path) -> Iterator[tuple[str, list[str]]]:
    """(folder, names of its non-folder entries) for `top` and every folder below it, without following symlinks.

    A loop, not os.walk: before Python 3.12 os.walk recurses, and a folder nested a few thousand levels deep
    (anyone who can write into the folder can make one) ended the whole run with a RecursionError. Folders that
    cannot be read are passed over, as os.walk does.
    """
    stack = [os.fspath(top)]
    while stack:
        folder = stack.pop()
        files: list[str] = []
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        is_folder = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        is_folder = False
                    if is_folder:
                        stack.append(entry.path)
                    else:
                        files.append(entry.name)
        except OSError:
            continue
        yield folder, files


def outside(path: Path, roots: Sequence[Path]) -> str | None:
    """Why a file found under `roots` must not be read: a symlink whose target lies outside every one of them.

    Whoever can write into an ingested folder could otherwise link to the ingesting user's private files, which
    ingest would store and `imagedb serve` would hand out. A file named on the command line is its own root.
    """
    if not path.is_symlink():
        return None
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None  # dangling or looping: read_regular_file says why
    if not target.is_file():
        return None  # a device, FIFO or folder: read_regular_file names it
    if any(target == root or target.is_relative_to(root) for root in roots):
        return None
    return "a symbolic link to a file outside the folders given: skipped (give that folder too to ingest it)"


def is_image_name(path: Path) -> bool:
    """Whether a file found in a folder is one ingest reads (by its name, or the DICOM magic of a suffixless one)."""
    return _wanted(path)


def _wanted(path: Path) -> bool:
    # A file without a suffix is opened (never blocking) for the DICOM magic: DICOM exports often have no suffix.
    suffix = path.suffix.lower()
    return suffix in SUPPORTED_SUFFIXES or (not suffix and dicom.has_preamble(path))


def file_mtime(stat: os.stat_result) -> datetime:
    """Modification time at microsecond precision, exact, so a stored value compares equal on rerun."""
    return _EPOCH + timedelta(microseconds=stat.st_mtime_ns // 1000)


def read_regular_file(path: Path, max_bytes: int = MAX_FILE_BYTES) -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file, at most `max_bytes`; BadImage for anything else, without ever blocking.

    O_NONBLOCK makes opening a FIFO return at once instead of waiting for a writer; fstat on the open file
    (not the name, which may change in between) then refuses FIFOs, devices (a symlink to /dev/zero) and folders.
    """
    _check_name(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        kind = _kind(path)  # opening a socket fails with ENXIO: say what it is instead
        raise BadImage(f"{kind}, not a regular file" if kind else f"cannot read file: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        kind = _kind_of_mode(info.st_mode)
        if kind:
            raise BadImage(f"{kind}, not a regular file")
        if info.st_size > max_bytes:
            raise BadImage(f"larger than {max_bytes // 2**20} MiB")
        data = _read_at_most(fd, info.st_size, max_bytes)
    except OSError as exc:
        raise BadImage(f"cannot read file: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # it grew while we read it
        raise BadImage(f"larger than {max_bytes // 2**20} MiB")
    return data, info


def _read_at_most(fd: int, expected: int, max_bytes: int) -> bytes:
    # One read of the size fstat gave (no buffer of max_bytes for every small file), then more only if the file
    # turns out longer (growing, or /proc-like files that report size 0); stops past max_bytes.
    parts = []
    total = 0
    want = min(expected, max_bytes) + 1
    while total <= max_bytes:
        chunk = os.read(fd, want)
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
        want = min(2**20, max_bytes + 1 - total) if total >= expected else expected - total + 1
    return b"".join(parts)


def _check_name(path: Path) -> None:
    text = str(path)
    if readable(text) == text:
        return
    where = "folder" if readable(path.name) == path.name else "file"
    raise BadImage(f"{where} name is not valid UTF-8: rename it (for example with convmv)")


def _kind(path: Path) -> str | None:
    try:
        return _kind_of_mode(os.stat(path).st_mode)
    except OSError:
        return None


def _kind_of_mode(mode: int) -> str | None:
    return next((name for test, name in _KINDS if test(mode)), None) if not stat.S_ISREG(mode) else None
