"""`imagedb ingest`, and how its progress is shown: bars on a terminal, plain lines elsewhere."""

from __future__ import annotations

import shlex
import signal
import sys
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


# Fewer images embedded than this give no rate: one image's time says nothing about the next thousand.
RATE_MIN_IMAGES = 10


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
    "--retry-failed",
    is_flag=True,
    help="Try again every file that failed before; by default one is retried only once its size or mtime changed.",
)
@click.option(
    "--include-forgotten",
    is_flag=True,
    help="Ingest files `imagedb forget` removed, and stop leaving them out (as `imagedb unforget` does).",
)
@click.option(
    "--watch",
    "watch_folders",
    is_flag=True,
    help="Keep running after the first pass: ingest new and changed files within seconds, and remove deleted ones,"
    " until Ctrl-C. (Not `imagedb watch`, which is copy detection.)",
)
@click.option(
    "--ocr",
    is_flag=True,
    help="Read the text in the new images for keyword search, after they are embedded (the ocr extra:"
    " pip install 'imagedb[ocr]').",
)
@click.option("--poll", is_flag=True, help="With --watch: look for changes by polling (network folders: NFS, SMB).")
@click.option(
    "--settle",
    default=2.0,
    show_default=True,
    type=click.FloatRange(0.1, 3600),
    help="With --watch: seconds a file's size and mtime must stay still before it is ingested (a copy in progress).",
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
    retry_failed: bool,
    include_forgotten: bool,
    watch_folders: bool,
    poll: bool,
    settle: float,
    ocr: bool,
) -> None:
    """Add the images in PATHS (files or folders, recursive) to a collection.

    Reads JPEG, PNG, WebP, GIF (first frame), BMP, TIFF, HEIC/HEIF and AVIF (by file name: .jpg .jpeg .png
    .webp .gif .bmp .tif .tiff .heic .heif .avif), and DICOM (.dcm .dicom, or no suffix and the DICM magic),
    de-identified. Unchanged files are skipped, so rerunning is cheap and resumes
    an interrupted run. Files that cannot be stored (broken, not regular files, names that are not UTF-8) are
    listed and recorded in the ingest_errors table; the run goes on, and later runs try them again only once they
    change (--retry-failed: all). Files `imagedb forget` removed stay out (--include-forgotten).

    Ingests of the same collection running at once share the files: each decodes and embeds its part, and says
    what the other runs stored. Ctrl-C (or SIGTERM) stops after the batches being stored commit, prints what was
    kept and the command that continues.

    --watch keeps watching PATHS for new, changed, moved and deleted images (inotify, or --poll) and keeps the
    collection in step; it waits out a database restart. `imagedb watch` is another thing: copy detection.
    """
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
    if (poll or settle != 2.0) and not watch_folders:
        raise click.UsageError("--poll and --settle go with --watch")
    progress = BarProgress() if sys.stderr.isatty() else PlainProgress()
    announce_after(progress)
    options: dict[str, Any] = dict(
        collection=collection,
        model=model_spec(model),
        batch_size=batch_size,
        keep_gps=keep_gps,
        keep_identifying=keep_identifying,
        metadata=metadata,
        dicom=DicomOptions(keep_dates=keep_dates, keep_phi=keep_phi, all_frames=all_frames),
        allow_random_weights=allow_random_weights,
        retry_failed=retry_failed,
        include_forgotten=include_forgotten,
        ocr=ocr,
    )
    stopped = _stop_on_signals()
    try:
        if watch_folders:
            if _watch(ctx, paths, options, progress, poll, settle):
                ctx.exit(128 + stopped.get("signal", signal.SIGINT))
            return
        with _store(ctx) as store:
            try:
                summary = run_ingest(store, paths, progress=progress, **options)
            finally:
                progress.close()
    except KeyboardInterrupt:  # before the run began storing (scanning, loading the model), or building the index
        click.echo(f"interrupted: what was stored is kept; to continue: {_command()}", err=True)
        ctx.exit(128 + stopped.get("signal", signal.SIGINT))
    finally:
        signal.signal(signal.SIGTERM, stopped["previous"])
    _echo_summary(summary, bool(metadata))
    if summary.interrupted:
        ctx.exit(128 + stopped.get("signal", signal.SIGINT))


def _stop_on_signals() -> dict[str, Any]:
    """SIGTERM stops an ingest as Ctrl-C does: with its summary. Returns which signal came, and the old handler."""
    stopped: dict[str, Any] = {}

    def on_term(signum: int, frame: object) -> None:
        stopped["signal"] = signum
        raise KeyboardInterrupt

    stopped["previous"] = signal.signal(signal.SIGTERM, on_term)
    return stopped


def _command() -> str:
    """The command line this run was started with, to run again."""
    return shlex.join(["imagedb", *sys.argv[1:]])


def _watch(
    ctx: click.Context, paths: tuple[str, ...], options: dict[str, Any], progress: Any, poll: bool, settle: float
) -> bool:
    """Run the watch until Ctrl-C or SIGTERM; returns whether one stopped it."""
    from imagedb.folder_watch import watch
    from imagedb.pg.database import open_connection
    from imagedb.store import Store

    root = ctx.find_root()

    def connect() -> Store:
        return Store(open_connection(root.obj["database_url"], root.obj["home"]))

    def on_pass(summary: Any) -> None:
        progress.close()
        _echo_summary(summary, bool(options.get("metadata")))

    totals = watch(
        connect, paths, poll=poll, settle_s=settle, progress=progress, on_pass=on_pass, on_status=_status, **options
    )
    click.echo(
        f"watch stopped: added {totals.added}, reused {totals.reused}, removed {totals.removed}, failed"
        f" {totals.failed} in {totals.passes} pass(es)"
    )
    return totals.interrupted


def _status(text: str) -> None:
    click.echo(printable(text), err=True)


def _echo_summary(summary: Any, metadata: bool) -> None:
    """What a run did, as the user reads it: errors, metadata, the counts, and after Ctrl-C how to continue."""
    for path, reason in summary.errors[:20]:
        click.echo(printable(f"failed: {path}: {reason}"), err=True)
    if len(summary.errors) > 20:
        click.echo(f"... and {len(summary.errors) - 20} more (see the ingest_errors table)", err=True)
    if metadata:
        click.echo(
            f"metadata: {summary.metadata_matched} row(s) attached, {len(summary.metadata_unmatched)} matched"
            " no image" + "".join(f"\n  unmatched: {printable(key)}" for key in summary.metadata_unmatched[:20])
        )
    rate = ""
    if summary.added >= RATE_MIN_IMAGES and summary.embedding_seconds:
        # Of the images embedded, over the embedding phase, and said so: the total time holds the model load too
        # (seconds), and images reused from identical content cost no embedding at all.
        rate = f" ({summary.added / summary.embedding_seconds:.1f} images/s while embedding)"
    others = [
        (summary.by_others, "stored by another ingest running at the same time"),
        (summary.busy, "skipped: being ingested by another run"),
        (summary.failed_unchanged, "failed before and unchanged, not retried (--retry-failed)"),
        (summary.forgotten, "forgotten, left out (imagedb unforget)"),
    ]
    click.echo(
        f"{summary.collection}: added {summary.added}, reused {summary.reused}, skipped {summary.skipped} unchanged,"
        f" failed {summary.failed}, watch hits {summary.watch_hits}"
        + "".join(f", {count} {what}" for count, what in others if count)
        + f" in {summary.seconds:.1f} s{rate}"
    )
    if summary.words is not None and summary.words.ocr_read:
        from imagedb.cli.keywords import report

        report(summary.words)
    if summary.watch_hits:
        click.echo(f"{summary.watch_hits} image(s) look like a watched one: see imagedb watch hits", err=True)
    if summary.interrupted:
        click.echo(f"interrupted: the images counted above are stored; to continue: {_command()}", err=True)
