"""`imagedb models ...`: list the models of each collection, add one, switch to it, drop the old one."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from imagedb import config
from imagedb.cli.support import Group, open_store
from imagedb.display import escape

_collection_option = click.option(
    "--collection", "-c", default=config.DEFAULT_COLLECTION, show_default=True, help="Collection to change."
)


def _spec(value: str):  # type: ignore[no-untyped-def]
    from imagedb.embed import ModelSpec

    return ModelSpec.parse(value)


@click.group(cls=Group)
def models() -> None:
    """Change a collection's model with no downtime: add, use, drop."""


@models.command("list", access="read")
@click.option("--collection", "-c", help="Only this collection's models [default: every collection's].")
@click.pass_context
def list_models(ctx: click.Context, collection: str | None) -> None:
    """Every model of every collection: vectors, dimension, state, index, provenance."""
    from imagedb.collection import get_collection
    from imagedb.embed import ModelSpec
    from imagedb.models import list_models as run_list

    with open_store(ctx) as store:
        if collection is not None:
            get_collection(store, collection)  # a name that is no collection says so, rather than listing nothing
        rows = [r for r in run_list(store) if collection is None or r.collection == collection]
    if not rows:
        click.echo("no collections yet (imagedb ingest PATH)")
    for r in rows:
        spec = ModelSpec(r.model.name, r.model.pretrained)
        state = "search" if r.searched else ("ready" if r.ready else "adding")
        click.echo(
            f"{escape(r.collection)}  {escape(str(spec))}  [{state}]  {r.vectors}/{r.images} vectors,"
            f" dim {r.model.dim}, index {r.index}"
        )
        sha = r.model.checkpoint_sha256
        weights = f"sha256 {sha}, {r.model.checkpoint_bytes} bytes" if sha else "weights unrecorded"
        pre = r.preprocess or {}
        preprocess = f"{pre.get('size')} {pre.get('resize_mode')} {pre.get('interpolation')}" if pre else "?"
        click.echo(
            f"    {weights}; open_clip {r.open_clip_version or '?'}, torch {r.torch_version or '?'};"
            f" preprocess {preprocess}; tokenizer {r.tokenizer or '?'}; registered {r.registered_at:%Y-%m-%d %H:%M}"
        )


@models.command(access="write")
@click.argument("spec")
@_collection_option
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096), help="Images per batch.")
@click.option("--allow-random-weights", is_flag=True, help="Let SPEC have no weights (random, for tests only).")
@click.pass_context
def add(ctx: click.Context, spec: str, collection: str, batch_size: int, allow_random_weights: bool) -> None:
    """Embed every image of the collection with model SPEC too, while searches keep using the current one.

    Resumable: run it again after an interruption. New ingests into the collection embed with both models
    meanwhile. Then switch with `imagedb models use SPEC`.
    """
    from imagedb.cli.ingest import BarProgress, PlainProgress, printable
    from imagedb.cli.options import announce_after
    from imagedb.models import add as run_add

    progress = BarProgress() if sys.stderr.isatty() else PlainProgress()
    announce_after(progress)
    model = _spec(spec)
    with open_store(ctx) as store:
        try:
            summary = run_add(
                store, model, collection, batch_size=batch_size, progress=progress,
                allow_random_weights=allow_random_weights,
            )  # fmt: skip
        finally:
            progress.close()
    for image_id, reason in (summary.failed or [])[:20]:
        click.echo(printable(f"failed: image {image_id}: {reason}"), err=True)
    thumbs = f", {summary.from_thumbnail} from thumbnails (file gone or changed)" if summary.from_thumbnail else ""
    click.echo(
        f"{escape(summary.collection)}: {summary.model}: embedded {summary.embedded}, reused {summary.reused}"
        f"{thumbs}, failed {len(summary.failed or [])}"
    )
    if not summary.ready:
        raise click.ClickException(
            f"not every image has a vector of {model} yet: run `imagedb models add {model} -c {collection}` again"
        )
    click.echo(f"ready: switch with imagedb models use {model} -c {escape(collection)}")


@models.command(access="none")
@click.argument("spec")
@click.argument("new_checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def move(ctx: click.Context, spec: str, new_checkpoint: Path) -> None:
    """Point model SPEC at its checkpoint's new place (the same file, by its recorded SHA-256)."""
    from imagedb.models import move as run_move

    with open_store(ctx) as store:
        moved = run_move(store, _spec(spec), new_checkpoint)
    click.echo(f"model {escape(str(_spec(spec)))} now reads {escape(str(moved.checkpoint))}")


@models.command(access="write")
@click.argument("spec")
@_collection_option
@click.pass_context
def use(ctx: click.Context, spec: str, collection: str) -> None:
    """Make SPEC (fully added) the model searches of the collection use, at once."""
    from imagedb.models import use as run_use

    model = _spec(spec)
    with open_store(ctx) as store:
        previous = run_use(store, model, collection)
    click.echo(
        f"{escape(collection)} now searches with {model} (was {previous}; drop it with"
        f" imagedb models drop {previous} -c {escape(collection)})"
    )


@models.command(access="write")
@click.argument("spec")
@_collection_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def drop(ctx: click.Context, spec: str, collection: str, yes: bool) -> None:
    """Delete the collection's vectors of SPEC (not the model it searches with), and its index when unused."""
    from imagedb.models import drop as run_drop

    model = _spec(spec)
    if not yes:
        try:
            confirmed = click.confirm(f"Delete every vector of {model} in {escape(collection)}?")
        except click.Abort:  # no answer: stdin at its end, as under cron or a pipe
            confirmed = False
        if not confirmed:
            where = "" if sys.stdin.isatty() else " (no terminal to ask on)"
            raise click.ClickException(f"nothing dropped{where}: confirm with --yes, e.g. imagedb models drop"
                                       f" {model} -c {escape(collection)} --yes")  # fmt: skip
    with open_store(ctx) as store:
        summary = run_drop(store, model, collection)
    index = "; its index and registration are dropped" if summary.index_dropped else ""
    click.echo(f"{escape(summary.collection)}: dropped {summary.vectors} vector(s) of {summary.model}{index}")


@models.command(access="none")
@click.argument("spec", required=False)
def fetch(spec: str | None) -> None:
    """Download model SPEC's weights (default: the model new collections get) into the home folder, and record
    their SHA-256.

    Ingests and searches with SPEC then find them there, offline and with HF_HUB_OFFLINE=1 too. Weights there
    already are only recorded. Without a network here, copy the file the error names from a machine that has one
    and use `imagedb models import`.
    """
    from imagedb.weights import fetch as run_fetch

    model = _spec(spec or config.new_collection_model())
    click.echo(f"fetching the weights of {model} ...", err=True)
    weights = run_fetch(model, None if sys.stderr.isatty() else _plain_bar())
    state = "there already" if weights.already else "downloaded"
    click.echo(f"{model}: {state}, {escape(str(weights.file))} ({weights.size / 1e6:.1f} MB, sha256 {weights.sha256})")


def _plain_bar() -> type:
    """A download's progress as a line at each tenth, for stderr that is not a terminal (a log, cron): the hub
    client's bar shows on terminals only, so a 600 MB download said nothing for minutes."""
    from tqdm import tqdm

    class PlainBar(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._tenth = -1
            kwargs.pop("name", None)
            super().__init__(*args, **{**kwargs, "disable": False})

        def display(self, msg: str | None = None, pos: int | None = None) -> bool:
            tenth = int(10 * self.n / self.total) if self.total else 0
            if tenth > self._tenth:
                self._tenth = tenth
                click.echo(f"{self.desc}: {self.n / 1e6:.1f}/{(self.total or 0) / 1e6:.1f} MB", err=True)
            return True

    return PlainBar


@models.command("import", access="none")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def import_weights(name: str, file: Path) -> None:
    """Check that checkpoint FILE loads into the open_clip architecture NAME, keep a copy in the home folder and
    record its SHA-256; prints the model to use it with.

    \b
    NAME as ARCH:TAG (ViT-B-32:laion2b_s34b_b79k): the weights of that tag, brought from a machine with a network;
    the model keeps its name and loads offline, as if `imagedb models fetch` had downloaded them.
    NAME as ARCH alone: your own weights, used as ARCH:/path/to/the/copy. A custom architecture needs ARCH.json
    (an open_clip model config) beside FILE; it is copied along.
    """
    from imagedb.weights import import_checkpoint

    weights = import_checkpoint(name, file)
    state = "there already" if weights.already else "imported"
    click.echo(f"{state}: {escape(str(weights.file))} ({weights.size / 1e6:.1f} MB, sha256 {weights.sha256})")
    if ":" in name:  # the tag's own name: what uses it (the default model included) finds it there now
        click.echo(f"{escape(weights.spec)} now loads from this copy, offline too")
        return
    click.echo(
        f"use it with --model {escape(weights.spec)}, or for every new collection: imagedb config set model"
        f" {escape(weights.spec)}"
    )
