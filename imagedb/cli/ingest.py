"""`imagedb ingest`, and how its progress is shown: bars on a terminal, plain lines elsewhere."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from imagedb.cli.options import announce_after, collection_option, model_option, model_spec
from imagedb.cli.support import Command
from imagedb.cli.support import open_store as _store


class PlainProgress:
    """Ingest progress as a few plain lines on stderr, for logs and pipes: phases, and embedding every ~10% or 5 s."""

    INTERVAL_S = 5.0

    def __init__(self) -> None:
        self._name = ""
        self._total: int | None = None
        self._done = 0
        self._started = self._last_line = time.monotonic()
        self._last_step = 0

    def phase(self, name: str, total: int | None = None, detail: str = "") -> None:
        from imagedb.progress import ATTACHING_METADATA, LOADING_MODEL, SCANNING

        self.close()
        if name == LOADING_MODEL:
            return  # embed.on_load says it, once per model (see main)
        self._name, self._total, self._done, self._last_step = name, total, 0, 0
        self._started = self._last_line = time.monotonic()
        if name == ATTACHING_METADATA:
            _progress_line(f"{name}: {total} rows")
        elif name != SCANNING and total is None:
            _progress_line(f"{name} {detail} ...".replace("  ", " "))

    def advance(self, n: int = 1) -> None:
        self._done += n
        now = time.monotonic()
        step = self._done * 10 // self._total if self._total else 0
        if step > self._last_step or now - self._last_line >= self.INTERVAL_S:
            self._last_step, self._last_line = step, now
            if self._done != self._total:  # the last one is printed by close()
                _progress_line(self._line(now))

    def close(self) -> None:
        from imagedb.progress import SCANNING

        if self._name == SCANNING or (self._total and self._done):
            _progress_line(self._line(time.monotonic(), final=True))
        self._name, self._total = "", None

    def _line(self, now: float, final: bool = False) -> str:
        elapsed = now - self._started
        if self._total is None:
            return f"{self._name}: {self._done} files" + ("" if final else " so far")
        text = f"{self._name}: {self._done}/{self._total}"
        rate = self._done / elapsed if elapsed > 0 else 0.0
        if final:
            return f"{text} in {elapsed:.1f} s"
        left = (self._total - self._done) / rate if rate else None
        eta = f", about {_duration(left)} left" if left is not None else ""
        return f"{text} ({self._done * 100 // self._total}%, {rate:.1f} img/s{eta})"


class BarProgress:
    """Ingest progress on a terminal: one tqdm line per phase, kept on screen when it ends."""

    def __init__(self) -> None:
        self._bar: Any = None

    def phase(self, name: str, total: int | None = None, detail: str = "") -> None:
        from tqdm import tqdm

        from imagedb.progress import LOADING_MODEL, SCANNING

        self.close()
        if name == LOADING_MODEL:
            return  # embed.on_load says it, once per model (see main)
        label = f"{name} {detail}".strip()
        if name == SCANNING:
            fmt = "{desc}: {n_fmt} files [{elapsed}]"
        elif total is None:
            fmt = "{desc} ... {elapsed}"
        else:
            fmt = None  # k/N, percentage, rate and ETA
        self._bar = tqdm(desc=label, total=total, unit="img", bar_format=fmt, leave=True, dynamic_ncols=True)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _progress_line(text: str) -> None:
    click.echo(printable(text), err=True)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def printable(text: str) -> str:
    """One line, whatever a file name holds: control characters (a newline in a name) as escapes."""
    from imagedb.files import readable

    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in readable(text))


@click.command(cls=Command, access="write")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@collection_option
@model_option
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096), help="Images per batch.")
@click.option("--keep-gps", is_flag=True, help="Store GPS coordinates from EXIF (off by default, for privacy).")
@click.option(
    "--keep-identifying",
    is_flag=True,
    help="Store EXIF fields that identify a person or device: serial numbers, owner, artist, copyright,"
    " descriptions and comments (off by default, for privacy; see docs/privacy.md).",
)
@click.option(
    "--metadata",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSV or JSON Lines of user attributes, one row per image, keyed by a 'path' or 'filename' column.",
)
@click.option("--keep-dates", is_flag=True, help="DICOM: store the study date (by default only its year).")
@click.option(
    "--keep-phi",
    is_flag=True,
    help="DICOM: store the whole header, patient name, ids and dates included. WARNING: patient data; only for a"
    " collection created with this flag (see docs/dicom.md).",
)
@click.option("--all-frames", is_flag=True, help="DICOM: store every frame of a multi-frame file (else the middle).")
@click.option(
    "--allow-random-weights",
    is_flag=True,
    help="Let a new collection's model have no weights (NAME alone): random, for tests only. Refused otherwise.",
)
@click.option(
    "--ocr",
    is_flag=True,
    help="Read the text in the new images for keyword search, after they are embedded (the ocr extra:"
    " pip install 'imagedb[ocr]').",
)
@click.pass_context
def ingest(
    ctx: click.Context,
    paths: tuple[str, ...],
    collection: str,
    model: str | None,
    batch_size: int,
    keep_gps: bool,
    keep_identifying: bool,
    metadata: Path | None,
    keep_dates: bool,
    keep_phi: bool,
    all_frames: bool,
    allow_random_weights: bool,
    ocr: bool,
) -> None:
    """Add the images in PATHS (files or folders, recursive) to a collection.

    Reads JPEG, PNG, WebP, GIF (first frame), BMP, TIFF, HEIC/HEIF and AVIF (by file name: .jpg .jpeg .png
    .webp .gif .bmp .tif .tiff .heic .heif .avif), and DICOM (.dcm .dicom, or no suffix and the DICM magic),
    de-identified. Unchanged files are skipped, so rerunning is cheap and resumes
    an interrupted run. Files that cannot be stored (broken, not regular files, names that are not UTF-8) are
    listed and recorded in the ingest_errors table; the run goes on.
    """
    import sys

    from imagedb.attributes import read_rows
    from imagedb.dicom import DicomOptions
    from imagedb.files import check_paths
    from imagedb.ingest import ingest as run_ingest

    if ocr:
        from imagedb.ocr import require

        require()  # one line saying how to turn it on, before any work
    check_paths(paths)  # a wrong path or metadata file fails here, before the database or the model is touched
    if metadata:
        read_rows(metadata)
    progress = BarProgress() if sys.stderr.isatty() else PlainProgress()
    announce_after(progress)
    with _store(ctx) as store:
        try:
            summary = run_ingest(
                store,
                paths,
                collection=collection,
                model=model_spec(model),
                batch_size=batch_size,
                keep_gps=keep_gps,
                keep_identifying=keep_identifying,
                metadata=metadata,
                progress=progress,
                dicom=DicomOptions(keep_dates=keep_dates, keep_phi=keep_phi, all_frames=all_frames),
                allow_random_weights=allow_random_weights,
                ocr=ocr,
            )
        finally:
            progress.close()
    for path, reason in summary.errors[:20]:
        click.echo(printable(f"failed: {path}: {reason}"), err=True)
    if len(summary.errors) > 20:
        click.echo(f"... and {len(summary.errors) - 20} more (see the ingest_errors table)", err=True)
    if metadata:
        click.echo(
            f"metadata: {summary.metadata_matched} row(s) attached, {len(summary.metadata_unmatched)} matched"
            " no image" + "".join(f"\n  unmatched: {printable(key)}" for key in summary.metadata_unmatched[:20])
        )
    stored = summary.added + summary.reused
    # The rate of the embedding phase: over the whole run a first model load (seconds) would swamp it.
    rate = f" ({stored / summary.embedding_seconds:.1f} images/s)" if stored and summary.embedding_seconds else ""
    click.echo(
        f"{summary.collection}: added {summary.added}, reused {summary.reused}, skipped {summary.skipped} unchanged,"
        f" failed {summary.failed}, watch hits {summary.watch_hits} in {summary.seconds:.1f} s{rate}"
    )
    if ocr and summary.words is not None:
        from imagedb.cli.keywords import report

        report(summary.words)
    if summary.watch_hits:
        click.echo(f"{summary.watch_hits} image(s) look like a watched one: see imagedb watch hits", err=True)
