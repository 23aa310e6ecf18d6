"""`imagedb keywords`: the words of stored images (docs/keywords.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from imagedb.cli.options import collection_option
from imagedb.cli.support import Group
from imagedb.cli.support import open_store as _store
from imagedb.display import escape

if TYPE_CHECKING:
    from imagedb.keywords import WordsSummary


@click.group(cls=Group)
def keywords() -> None:
    """Words of stored images for keyword search: file names, folders, attributes, captions, OCR text."""


@keywords.command(access="write")
@collection_option
@click.option("--ocr", "read_ocr", is_flag=True, help="Also read the text in images not read yet (the ocr extra).")
@click.option("--retry-failed", is_flag=True, help="With --ocr: read again the images OCR failed on before.")
@click.pass_context
def refresh(ctx: click.Context, collection: str, read_ocr: bool, retry_failed: bool) -> None:
    """Remake the words of every image of a collection, read captions never read, and with --ocr the text in
    the images (after the embedding: it never holds up an ingest)."""
    from imagedb import keywords as run
    from imagedb import ocr

    if retry_failed and not read_ocr:
        raise click.UsageError("--retry-failed goes with --ocr")
    if read_ocr:
        ocr.require()  # one line saying how to turn it on, before the database
    with _store(ctx) as store:
        summary = run.refresh(store, collection, read_ocr=read_ocr, retry=retry_failed)
    report(summary)


@keywords.command(access="read")
@collection_option
@click.pass_context
def status(ctx: click.Context, collection: str) -> None:
    """How many images have captions and OCR text, and how many OCR failed on."""
    from imagedb import ocr
    from imagedb.collection import get_collection

    with _store(ctx) as store:
        counts = store.keywords.counts(get_collection(store, collection).id)
    for name, value in counts.items():
        click.echo(f"{name.replace('_', ' ')}: {value}")
    if not ocr.available():
        click.echo(ocr.HOW_TO_ENABLE)


def report(summary: WordsSummary) -> None:
    """What reading captions and OCR did, as ingest and refresh print it."""
    click.echo(f"captions read: {summary.captions} image(s), {summary.with_caption} with words")
    if summary.ocr_read:
        per = summary.ocr_seconds / summary.ocr_read
        click.echo(
            f"ocr: {summary.ocr_read} image(s) read, {summary.ocr_with_text} with text, {len(summary.ocr_failed)}"
            f" failed, {per:.2f} s per image"
        )
    for path, reason in summary.ocr_failed[:20]:
        click.echo(escape(f"ocr failed: {path}: {reason}"), err=True)
