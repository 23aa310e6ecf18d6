"""What several commands share: the options for collections and models, and telling model loads."""

from __future__ import annotations

from typing import Any

import click

from imagedb import config
from imagedb.display import one_line


def announce_load(spec: Any) -> None:
    click.echo(one_line(f"loading {spec.label} ..."), err=True)


def announce_after(progress: Any) -> None:
    """Announce model loads between the progress lines: the phase shown so far ends first."""
    from imagedb import embed

    def announce(spec: Any) -> None:
        progress.close()
        announce_load(spec)

    embed.on_load = announce


def model_spec(value: str | None) -> Any:
    from imagedb.embed import ModelSpec

    # Only an explicit --model: IMAGEDB_MODEL applies when a collection is created (collection.get_or_create).
    return ModelSpec.parse(value) if value else None


collection_option = click.option(
    "--collection", "-c", default=config.DEFAULT_COLLECTION, show_default=True, help="Collection to use."
)


def _checked_model(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A misspelt architecture is refused while the options are read: before the database, the files, or torch."""
    from imagedb.embed import ModelSpec
    from imagedb.errors import InvalidInput

    if value:
        try:
            ModelSpec.parse(value)
        except InvalidInput as exc:
            raise click.BadParameter(one_line(str(exc)), ctx, param) from exc
    return value


model_option = click.option(
    "--model",
    "-m",
    callback=_checked_model,
    help="open_clip model as NAME[:PRETRAINED] or NAME:/path/to/checkpoint. A new collection gets it (else"
    f" IMAGEDB_MODEL, else the settings file's model, else {config.DEFAULT_MODEL}); an existing one uses its own"
    " and refuses another.",
)
