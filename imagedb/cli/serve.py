"""`imagedb serve`: the web page and the JSON API."""

from __future__ import annotations

import logging

import click

from imagedb.cli.support import Command, click_error
from imagedb.errors import InvalidInput


@click.command(cls=Command, access="none")
@click.option("--host", help="Address to listen on [default: serve.host of the settings file, else 127.0.0.1].")
@click.option("--port", type=click.IntRange(1, 65535), help="TCP port to listen on [default: serve.port, else 8000].")
@click.option(
    "--token",
    envvar="IMAGEDB_API_TOKEN",
    help="Require Authorization: Bearer TOKEN on the API [env IMAGEDB_API_TOKEN; settings file: serve.token];"
    " needed off loopback.",
)
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, token: str | None) -> None:
    """Serve the web page and the JSON API (OpenAPI schema at /openapi.json)."""
    from imagedb import config

    # Only what was not given comes from the settings file: an empty --token is still refused as empty.
    host = host if host is not None else str(config.resolve("serve.host").value)
    port = port if port is not None else int(config.resolve("serve.port").value or 8000)
    if token is None:
        token = str(config.resolve("serve.token").value or "") or None
    if not 1 <= port <= 65535:
        raise click.BadParameter(f"{port} (from the settings file) is not a TCP port", param_hint="serve.port")
    import sys

    import uvicorn

    from imagedb.api import create_app
    from imagedb.api.bind import bind, check_exposure, url
    from imagedb.api.connections import server_config

    try:
        check_exposure(host, token)
    except InvalidInput as exc:
        # Bad usage (exit 2) in one line: each option parsed, so click's usage line would not help.
        raise click_error(exc) from exc
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
        logging.getLogger("imagedb.api").addHandler(handler)
    logging.getLogger("imagedb.api").setLevel(logging.INFO)
    click.echo(f"imagedb on {url(host, port)}", err=True)
    server = uvicorn.Server(server_config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])
