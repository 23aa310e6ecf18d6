"""The `imagedb` command: parse options, call one library function, format its result."""

from __future__ import annotations

import logging

import click

from imagedb.cli.options import announce_load
from imagedb.cli.support import Group

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
    help="PostgreSQL with pgvector to use [env IMAGEDB_DATABASE_URL; settings file: database_url]. Default: the"
    " embedded server.",
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
    from imagedb import config

    # --home for the whole command: the settings file read deep in the library (a new collection's model) is its.
    token = config.HOME_OPTION.set(home)
    ctx.call_on_close(lambda: config.HOME_OPTION.reset(token))
    from imagedb import embed

    # The first use of a model in this process says what the wait is (seconds to load, or a download).
    embed.on_load = announce_load


# Each command group in a module of its own; imported here, after `main`, so that `imagedb --help` stays light.
from imagedb.cli.config import config_group  # noqa: E402
from imagedb.cli.curate import dupes, forget, tag, unforget, watch  # noqa: E402
from imagedb.cli.db import db  # noqa: E402
from imagedb.cli.ingest import ingest  # noqa: E402
from imagedb.cli.keywords import keywords  # noqa: E402
from imagedb.cli.models import models  # noqa: E402
from imagedb.cli.roles import grant_reader, grant_writer  # noqa: E402
from imagedb.cli.search import query_terms, search  # noqa: E402
from imagedb.cli.serve import serve  # noqa: E402
from imagedb.cli.tune import tune  # noqa: E402

_COMMANDS = (ingest, search, tag, dupes, watch, forget, unforget, grant_reader, grant_writer, serve, db, tune, models)
for command in (*_COMMANDS, config_group):
    main.add_command(command)
for command in (keywords,):
    main.add_command(command)

__all__ = ["main", "query_terms"]
