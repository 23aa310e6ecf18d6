"""The `imagedb` command: parse options, call one library function, format its result."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from imagedb import config
from imagedb.cli_db import db
from imagedb.cli_models import models as models_group
from imagedb.cli_support import Group
from imagedb.cli_support import open_store as _store
from imagedb.cli_tune import tune as tune_command
from imagedb.display import escape, iso
from imagedb.errors import InvalidInput

_EXAMPLES = """\b
Examples:
  imagedb ingest ~/Pictures
  imagedb search "a dog on a beach"
  imagedb search "beach + sunset - people" --after 2024-01-01 --json
  imagedb search --image shoe.jpg --null | xargs -0 ls -l
  imagedb dupes --method both
"""


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=_EXAMPLES)
@click.option(
    "--database-url",
    envvar="IMAGEDB_DATABASE_URL",
    help="PostgreSQL with pgvector to use [env IMAGEDB_DATABASE_URL]. Default: the embedded server.",
)
@click.option(
    "--home",
    envvar="IMAGEDB_HOME",
    type=click.Path(file_okay=False),
    help="Folder of the embedded server's data [env IMAGEDB_HOME].",
)
@click.option("--verbose", "-v", is_flag=True, help="Show the log messages of imagedb and the libraries it uses.")
@click.version_option(package_name="imagedb")
@click.pass_context
def main(ctx: click.Context, database_url: str | None, home: str | None, verbose: bool) -> None:
    """imagedb: search your images by text or by image, in PostgreSQL + pgvector."""
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    else:
        # open_clip and the hub client log each retry and failure; the error the user sees says it in one line.
        logging.disable(logging.ERROR)
    ctx.obj = {"database_url": database_url, "home": home}
    from imagedb import embed

    # The first use of a model in this process says what the wait is (seconds to load, or a download).
    embed.on_load = _announce_load


def _announce_load(spec: Any) -> None:
    click.echo(_printable(f"loading {spec.label} ..."), err=True)


def _announce_after(progress: Any) -> None:
    """Announce model loads between the progress lines: the phase shown so far ends first."""
    from imagedb import embed

    def announce(spec: Any) -> None:
        progress.close()
        _announce_load(spec)

    embed.on_load = announce


def _model(value: str | None) -> Any:
    from imagedb.embed import ModelSpec

    # Only an explicit --model: IMAGEDB_MODEL applies when a collection is created (collection.get_or_create).
    return ModelSpec.parse(value) if value else None


_collection_option = click.option(
    "--collection", "-c", default=config.DEFAULT_COLLECTION, show_default=True, help="Collection to use."
)
_model_option = click.option(
    "--model",
    "-m",
    help="open_clip model as NAME[:PRETRAINED] or NAME:/path/to/checkpoint. A new collection gets it (else"
    f" IMAGEDB_MODEL, else {config.DEFAULT_MODEL}); an existing one uses its own and refuses another.",
)

_search_model_option = click.option(
    "--model",
    "-m",
    help="Search with this model, one the collection holds (default: the one it searches with); e.g. a model"
    " being added, to compare before `imagedb models use` (`imagedb models list` shows them).",
)


class _PlainProgress:
    """Ingest progress as a few plain lines on stderr, for logs and pipes: phases, and embedding every ~10% or 5 s."""

    INTERVAL_S = 5.0

    def __init__(self) -> None:
        self._name = ""
        self._total: int | None = None
        self._done = 0
        self._started = self._last_line = time.monotonic()
        self._last_step = 0

    def phase(self, name: str, total: int | None = None, detail: str = "") -> None:
        from imagedb.ingest import ATTACHING_METADATA, LOADING_MODEL, SCANNING

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
        from imagedb.ingest import SCANNING

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


class _BarProgress:
    """Ingest progress on a terminal: one tqdm line per phase, kept on screen when it ends."""

    def __init__(self) -> None:
        self._bar: Any = None

    def phase(self, name: str, total: int | None = None, detail: str = "") -> None:
        from tqdm import tqdm

        from imagedb.ingest import LOADING_MODEL, SCANNING

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
    click.echo(_printable(text), err=True)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def _printable(text: str) -> str:
    """One line, whatever a file name holds: control characters (a newline in a name) as escapes."""
    from imagedb.images import readable

    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in readable(text))


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@_collection_option
@_model_option
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096), help="Images per batch.")
@click.option("--keep-gps", is_flag=True, help="Store GPS coordinates from EXIF (off by default, for privacy).")
@click.option(
    "--keep-identifying",
    is_flag=True,
    help="Store EXIF fields that identify a person or device: serial numbers, owner, artist, copyright,"
    " descriptions and comments (off by default, for privacy; see the README).",
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
    " collection created with this flag (see the README, Medical images).",
)
@click.option("--all-frames", is_flag=True, help="DICOM: store every frame of a multi-frame file (else the middle).")
@click.option(
    "--allow-random-weights",
    is_flag=True,
    help="Let a new collection's model have no weights (NAME alone): random, for tests only. Refused otherwise.",
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
    from imagedb.images import check_paths
    from imagedb.ingest import ingest as run_ingest

    check_paths(paths)  # a wrong path or metadata file fails here, before the database or the model is touched
    if metadata:
        read_rows(metadata)
    progress = _BarProgress() if sys.stderr.isatty() else _PlainProgress()
    _announce_after(progress)
    with _store(ctx) as store:
        try:
            summary = run_ingest(
                store,
                paths,
                collection=collection,
                model=_model(model),
                batch_size=batch_size,
                keep_gps=keep_gps,
                keep_identifying=keep_identifying,
                metadata=metadata,
                progress=progress,
                dicom=DicomOptions(keep_dates=keep_dates, keep_phi=keep_phi, all_frames=all_frames),
                allow_random_weights=allow_random_weights,
            )
        finally:
            progress.close()
    for path, reason in summary.errors[:20]:
        click.echo(_printable(f"failed: {path}: {reason}"), err=True)
    if len(summary.errors) > 20:
        click.echo(f"... and {len(summary.errors) - 20} more (see the ingest_errors table)", err=True)
    if metadata:
        click.echo(
            f"metadata: {summary.metadata_matched} row(s) attached, {len(summary.metadata_unmatched)} matched"
            " no image" + "".join(f"\n  unmatched: {_printable(key)}" for key in summary.metadata_unmatched[:20])
        )
    stored = summary.added + summary.reused
    rate = f" ({stored / summary.seconds:.1f} images/s)" if stored and summary.seconds else ""
    click.echo(
        f"{summary.collection}: added {summary.added}, reused {summary.reused}, skipped {summary.skipped} unchanged,"
        f" failed {summary.failed}, watch hits {summary.watch_hits} in {summary.seconds:.1f} s{rate}"
    )
    if summary.watch_hits:
        click.echo(f"{summary.watch_hits} image(s) look like a watched one: see imagedb watch hits", err=True)


_DATE = click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"])
# What --format accepts, in any case; JPG, TIF and HEIC are aliases of JPEG, TIFF and HEIF (search.FORMAT_ALIASES).
FORMATS = ("JPEG", "JPG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "TIF", "HEIF", "HEIC", "AVIF", "DICOM")


@main.command(short_help="Find images by text, by image file or by stored image.")
@click.argument("query", nargs=-1)
@click.option("--image", "-i", "images", multiple=True, type=click.Path(), help="Add an image file to the query.")
@click.option(
    "--like", "-l", "likes", multiple=True, type=click.IntRange(1, 2**63 - 1), help="Add a stored image (by id)."
)
@_collection_option
@_search_model_option
@click.option("--limit", "-k", default=10, show_default=True, type=click.IntRange(1, 1000), help="Results to show.")
@click.option("--offset", default=0, show_default=True, type=click.IntRange(0), help="Skip this many (paging).")
@click.option("--after", type=_DATE, metavar="DATE", help="Taken (else file time) on or after DATE.")
@click.option(
    "--before",
    type=_DATE,
    metavar="DATE",
    help="Taken (else file time) before DATE. DATE is YYYY-MM-DD[THH:MM:SS] (a space may replace the T), in UTC.",
)
@click.option("--camera", help="Camera make or model contains this text (any case).")
@click.option(
    "--format",
    "image_format",
    type=click.Choice(FORMATS, case_sensitive=False),
    metavar="FORMAT",
    help="File format, any case: JPEG (JPG), PNG, WEBP, GIF, BMP, TIFF (TIF), HEIF (HEIC), AVIF, DICOM.",
)
@click.option("--min-width", type=click.IntRange(1), help="At least this many pixels wide.")
@click.option("--min-height", type=click.IntRange(1), help="At least this many pixels high.")
@click.option("--path", "path_glob", help="Path matches this glob (* and ?), e.g. '*/holidays/*'.")
@click.option("--attr", "attrs", multiple=True, metavar="KEY=VALUE", help="User attribute equals value; repeatable.")
@click.option("--modality", help="DICOM modality, any case, e.g. CT, MR, CR, US.")
@click.option("--body-part", help="DICOM body part examined, any case, e.g. CHEST, HEAD.")
@click.option("--min-score", type=click.FloatRange(-1, 1), help="Drop results below this cosine similarity.")
@click.option(
    "--min-relevance",
    type=click.FloatRange(-1000, 1000),
    metavar="R",
    help="Drop results less relevant than R: standard deviations above an unrelated image's score for this"
    " query (one cutoff for every query; see the README).",
)
@click.option(
    "--collapse-duplicates",
    is_flag=True,
    help="One result per duplicate group of the last `imagedb dupes` run: its best match, with the count of the"
    " others.",
)
@click.option(
    "--sort",
    type=click.Choice(["score", "date"]),
    default="score",
    show_default=True,
    help="Order of the best matches: by score, or by date, newest first.",
)
@click.option(
    "--ef-search",
    type=click.IntRange(1, 1000),
    help="HNSW candidate list size: higher is more exact and slower. Default: the collection's, set by"
    f" `imagedb tune`, else {config.DEFAULT_EF_SEARCH}.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line (dates in UTC, ISO 8601).")
@click.option("--paths", "as_paths", is_flag=True, help="Only the paths, one per line, escaped as the table's.")
@click.option("--null", "-0", "as_null", is_flag=True, help="Only the paths, unescaped, each ended by NUL (xargs -0).")
@click.pass_context
def search(
    ctx: click.Context,
    query: tuple[str, ...],
    images: tuple[str, ...],
    likes: tuple[int, ...],
    collection: str,
    model: str | None,
    limit: int,
    offset: int,
    after: Any,
    before: Any,
    camera: str | None,
    image_format: str | None,
    min_width: int | None,
    min_height: int | None,
    path_glob: str | None,
    attrs: tuple[str, ...],
    modality: str | None,
    body_part: str | None,
    min_score: float | None,
    min_relevance: float | None,
    collapse_duplicates: bool,
    sort: str,
    ef_search: int | None,
    as_json: bool,
    as_paths: bool,
    as_null: bool,
) -> None:
    """Find the images nearest to QUERY: texts, image paths and id:N, joined by + and -, with W: weights.

    \b
      imagedb search a dog on a beach
      imagedb search "beach + sunset - people"
      imagedb search 2:"red dress" + ./shoe.jpg --format jpeg --after 2024-01-01
      imagedb search '"C++ code"'     (quoted inside: a + or - that is text)

    One argument is read as the HTTP API reads its q parameter, quotes and all. Paths in the table and with
    --paths are escaped (a backslash, then n, t, r, xNN or uNNNN, and a backslash doubled); --null prints them
    as they are.
    """
    from imagedb.attributes import parse_pairs
    from imagedb.search import search as run_search
    from imagedb.store import Filters

    chosen = [flag for flag, on in (("--json", as_json), ("--paths", as_paths), ("--null", as_null)) if on]
    if len(chosen) > 1:
        raise click.UsageError(f"{chosen[0]} and {chosen[1]} cannot be used together: choose one output")
    terms = query_terms(query, images, likes)
    filters = Filters(
        after=after,
        before=before,
        camera=camera,
        format=image_format,
        min_width=min_width,
        min_height=min_height,
        path=path_glob,
        attributes=tuple(parse_pairs(list(attrs)).items()),
        modality=modality,
        body_part=body_part,
    )
    with _store(ctx) as store:
        results = run_search(
            store,
            terms,
            collection=collection,
            model=_model(model),
            limit=limit,
            offset=offset,
            ef_search=ef_search,
            filters=filters,
            min_score=min_score,
            sort=sort,  # type: ignore[arg-type]
            min_relevance=min_relevance,
            collapse_duplicates=collapse_duplicates,
        )
    if as_null:
        click.echo(b"".join(os.fsencode(r.path) + b"\0" for r in results), nl=False)  # bytes: written raw
    elif as_paths:
        for r in results:
            click.echo(escape(r.path))
    elif as_json:
        for r in results:
            row = {
                "rank": r.rank,
                "score": round(r.score, 6),
                "relevance": None if r.relevance is None else round(r.relevance, 3),
                "id": r.image_id,
                "path": r.path,
                "date": iso(r.date),
            }
            if collapse_duplicates:
                row["duplicates"] = r.others
            click.echo(json.dumps(row))
    elif not results:
        click.echo("no results", err=True)
    else:
        more = "  more" if collapse_duplicates else ""
        click.echo(f"{'rank':>4}  {'score':>6}  {'relev':>6}  {'id':>8}  {'date':<10}{more}  path")
        for r in results:
            rel = "-" if r.relevance is None else f"{r.relevance:.1f}"
            others = f"  {'+' + str(r.others) if r.others else '':>4}" if collapse_duplicates else ""
            click.echo(
                f"{r.rank:>4}  {r.score:>6.3f}  {rel:>6}  {r.image_id:>8}  {r.date:%Y-%m-%d}{others}  {escape(r.path)}"
            )


def query_terms(query: Sequence[str], images: Sequence[str], likes: Sequence[int]) -> list[Any]:
    """The query's terms, then --image files and --like ids, added.

    One argument is parsed exactly as the API parses its q string (query.parse_string), so that
    `imagedb search "dog +"` is refused and `"beach + sunset"` is a sum, as on the web page. Several arguments
    are already split by the shell. One argument that names an existing file is that image, spaces and all.
    """
    from imagedb.query import Term, is_file, names_image, parse, parse_string

    terms: list[Term] = []
    if len(query) == 1 and not names_image(query[0]):
        terms = parse_string(query[0], files=True)
    elif query or not (images or likes):
        terms = parse(query, files=True)
    for image in images:
        if not is_file(image):
            raise InvalidInput(f"--image: no such image file: {image}")
        terms.append(Term("image", str(Path(image).expanduser()), 1.0))
    terms += [Term("id", str(n), 1.0) for n in likes]
    return terms


@main.command()
@click.argument("image")
@click.argument("pairs", nargs=-1, required=True, metavar="KEY=VALUE...")
@_collection_option
@click.pass_context
def tag(ctx: click.Context, image: str, pairs: tuple[str, ...], collection: str) -> None:
    """Set user attributes on IMAGE (an id, a path, or a file name)."""
    from imagedb.attributes import parse_pairs
    from imagedb.attributes import tag as run_tag

    attributes = parse_pairs(list(pairs))
    with _store(ctx) as store:
        ids = run_tag(store, collection, image, attributes)
        paths = store.paths(ids)
    click.echo(f"tagged {len(ids)} image(s):")
    _echo_images([(i, paths.get(i, "?")) for i in ids])


def _echo_images(images: Sequence[tuple[int, str]], shown: int = 10) -> None:
    """The first `shown` images as `id  path` lines (escaped), then how many more."""
    for image_id, path in images[:shown]:
        click.echo(f"  {image_id:>8}  {escape(path)}")
    if len(images) > shown:
        click.echo(f"  and {len(images) - shown} more")


@main.command()
@_collection_option
@click.option(
    "--method",
    type=click.Choice(["hash", "clip", "both"]),
    default="hash",
    show_default=True,
    help="Perceptual hash (copies: resized, recompressed, watermarked), CLIP (look-alikes), or both.",
)
@click.option(
    "--max-distance",
    type=click.IntRange(0, 64),
    default=config.DEFAULT_MAX_HASH_DISTANCE,
    show_default=True,
    help="Hash: at most this many of 64 bits differ.",
)
@click.option(
    "--min-similarity",
    type=click.FloatRange(-1, 1),
    default=config.DEFAULT_MIN_CLIP_SIMILARITY,
    show_default=True,
    help="CLIP: at least this cosine similarity.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per group.")
@click.pass_context
def dupes(
    ctx: click.Context, collection: str, method: str, max_distance: int, min_similarity: float, as_json: bool
) -> None:
    """Find groups of duplicate and near-duplicate images (saved in the duplicate_groups table).

    \b
    Each image after a group's first says how it joined (its rule):
      first   the group's first image (smallest id); the others link to it, directly or in a chain
      sha256  the same bytes as the image it links to (always grouped, whatever --method)
      hash    at most --max-distance of its 64 perceptual-hash bits differ from the linked image's
      clip    at least --min-similarity cosine similarity with the linked image's CLIP embedding

    Paths are escaped as in `imagedb search`'s table; --json gives them as they are.
    """
    from imagedb.dupes import find_duplicates

    with _store(ctx) as store:
        groups = find_duplicates(
            store,
            collection=collection,
            method=method,  # type: ignore[arg-type]
            max_distance=max_distance,
            min_similarity=min_similarity,
        )
    for group in groups:
        if as_json:
            members = [
                {
                    "image_id": m.image_id,
                    "path": m.path,
                    "matched_image_id": m.matched_image_id,
                    "rule": m.rule,
                    "bits": m.bits,
                    "similarity": m.similarity,
                }
                for m in group.members
            ]
            click.echo(json.dumps({"group": group.number, "members": members}))
            continue
        click.echo(f"group {group.number} ({len(group.members)} images)")
        for m in group.members:
            click.echo(f"  {m.image_id:>8}  {escape(m.path)}  {m.describe()}")
    if not as_json:
        images = sum(len(g.members) for g in groups)
        click.echo(f"{len(groups)} group(s), {images} image(s)", err=True)


@main.group()
def watch() -> None:
    """A watch list for copy detection: later ingests record and NOTIFY copies of watched images."""


@watch.command("add")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--label", help="A name for these images, e.g. the rights holder.")
@click.option(
    "--max-distance",
    type=click.IntRange(0, 64),
    default=config.DEFAULT_WATCH_MAX_DISTANCE,
    show_default=True,
    help="At most this many of 64 hash bits may differ.",
)
@click.pass_context
def watch_add(ctx: click.Context, paths: tuple[Path, ...], label: str | None, max_distance: int) -> None:
    """Watch PATHS (image files): copies already stored, and copies ingested later, also mirrored or turned,
    become hits."""
    from imagedb.dupes import add_watches

    with _store(ctx) as store:
        watched = add_watches(store, list(paths), label, max_distance)
    click.echo(f"watching {len(watched)} image(s):")
    for w in watched:
        click.echo(f"  watch {w.watch_id}: {escape(w.path)}  {w.stored_hits} stored image(s) already look like it")


@watch.command("list")
@click.pass_context
def watch_list(ctx: click.Context) -> None:
    """Show the watched images."""
    with _store(ctx) as store:
        rows = store.watches()
    for r in rows:
        click.echo(
            f"{r['id']:>5}  {escape(r['label'] or '-'):<16}  max {r['max_distance']:>2}  {r['hits']:>5} hit(s)"
            f"  {escape(r['path'])}"
        )


@watch.command("hits")
@click.option("--watch", "watch_id", type=int, help="Only the hits of this watch id.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def watch_hits(ctx: click.Context, watch_id: int | None, as_json: bool) -> None:
    """Show stored images that look like a watched one."""
    with _store(ctx) as store:
        rows = store.watch_hits(watch_id)
    for r in rows:
        if as_json:
            click.echo(json.dumps({**r, "found_at": iso(r["found_at"])}))
        else:
            click.echo(
                f"watch {r['watch_id']} ({escape(r['label'] or '-')}): image {r['image_id']} {escape(r['path'])}"
                f"  distance {r['distance']}"
            )


@main.command(short_help="Delete images and everything derived from them.")
@click.argument("images", nargs=-1, required=True)
@_collection_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--full",
    is_flag=True,
    help="VACUUM FULL: rewrite the tables, so no free space in them keeps the old bytes (locks them meanwhile).",
)
@click.pass_context
def forget(ctx: click.Context, images: tuple[str, ...], collection: str, yes: bool, full: bool) -> None:
    """Delete IMAGES (ids, paths or file names) and everything derived from them, then VACUUM.

    That is their embeddings, hashes, thumbnails, duplicate-group and watch-hit rows, and the ingest errors of
    their paths. The images are listed first, then you are asked (unless --yes).
    """
    from imagedb.access import forget as run_forget
    from imagedb.collection import find_images

    with _store(ctx) as store:
        found, missing = find_images(store, collection, images)
        for ref in missing:
            click.echo(f"not found: {escape(ref)}", err=True)
        click.echo(f"{len(found)} image(s) in collection {escape(collection)}:")
        _echo_images(found)
        if not yes:
            click.confirm("Forget them for good?", abort=True)
        # By path, which names exactly the images listed: a file name could match an image stored meanwhile.
        done = run_forget(store, collection, [path for _, path in found], full=full)
    click.echo(f"forgot {len(done.ids)} image(s)")
    if done.unvacuumed:
        click.echo(
            f"warning: this role may not VACUUM {', '.join(done.unvacuumed)}: the deleted rows' bytes stay in"
            " those table files until the owner runs VACUUM on them",
            err=True,
        )


_password_option = click.option(
    "--password", envvar="IMAGEDB_ROLE_PASSWORD", help="Set the role's password [env IMAGEDB_ROLE_PASSWORD]."
)


@main.command("grant-reader")
@click.argument("role")
@_password_option
@click.pass_context
def grant_reader(ctx: click.Context, role: str, password: str | None) -> None:
    """Let ROLE (created if missing) read the BI views only: no vectors, thumbnails, EXIF or GPS."""
    from imagedb.access import READER_VIEWS
    from imagedb.access import grant_reader as run_grant

    with _store(ctx) as store:
        grant = run_grant(store, role, password)
    click.echo(f"{'created' if grant.created else 'updated'} role {escape(role)}: SELECT on {', '.join(READER_VIEWS)}")
    _warn_without_password(role, grant.can_log_in)


@main.command("grant-writer")
@click.argument("role")
@_password_option
@click.pass_context
def grant_writer(ctx: click.Context, role: str, password: str | None) -> None:
    """Let ROLE (created if missing) ingest, tag, search and find duplicates in existing collections."""
    from imagedb.access import grant_writer as run_grant

    with _store(ctx) as store:
        grant = run_grant(store, role, password)
    click.echo(f"{'created' if grant.created else 'updated'} role {escape(role)}: read and write imagedb's tables")
    _warn_without_password(role, grant.can_log_in)


def _warn_without_password(role: str, can_log_in: bool) -> None:
    if not can_log_in:
        click.echo(f"note: {escape(role)} has no password, so it cannot log in: set one with --password", err=True)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback only by default).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="TCP port to listen on.")
@click.option(
    "--token",
    envvar="IMAGEDB_API_TOKEN",
    help="Require Authorization: Bearer TOKEN on the API [env IMAGEDB_API_TOKEN]; needed off loopback.",
)
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, token: str | None) -> None:
    """Serve the web page and the JSON API (OpenAPI schema at /openapi.json)."""
    import sys

    import uvicorn

    from imagedb.server import create_app
    from imagedb.server.listen import bind, check_exposure, url

    class Refused(click.ClickException):
        exit_code = 2  # bad usage, in one line

    try:
        check_exposure(host, token)
    except InvalidInput as exc:
        raise Refused(str(exc)) from exc
    sock = bind(host, port)  # before the slow start: a busy port says so at once
    try:
        app = create_app(ctx.obj["database_url"], ctx.obj["home"], token)
    except BaseException:
        sock.close()
        raise
    # main() silences library chatter below CRITICAL; a server must still log its requests and its errors.
    logging.disable(logging.NOTSET)
    if not ctx.find_root().params.get("verbose"):
        logging.getLogger().addHandler(logging.NullHandler())  # libraries stay quiet, as in other commands
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger("imagedb.server").addHandler(handler)
    logging.getLogger("imagedb.server").setLevel(logging.INFO)
    click.echo(f"imagedb on {url(host, port)}", err=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])


main.add_command(db)
main.add_command(tune_command)
main.add_command(models_group)
