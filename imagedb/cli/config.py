"""`imagedb config ...`: the settings file, and where each setting's value comes from."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import click

from imagedb import config
from imagedb.cli.support import Group
from imagedb.display import escape


@click.group("config", cls=Group)
def config_group() -> None:
    """Defaults that persist (model, database URL, serve options), in the settings file.

    \b
    Precedence: a command-line option > its environment variable > the settings file > the built-in default.
    The file is config.toml in the home folder (--home, IMAGEDB_HOME, else the platform's user data folder),
    written with mode 0600, since a database URL in it may hold a password.
    """


def _shown(setting: config.Setting, value: object) -> str:
    """A value as listed: a secret masked (a URL keeps all but its password)."""
    if value is None:
        return "(unset)"
    text = str(value)
    if not setting.secret:
        return text
    parts = urlsplit(text)
    if parts.scheme and parts.password:
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:****@{parts.netloc.rsplit('@', 1)[-1]}"))
    return text if parts.scheme else "****"


def _flag(ctx: click.Context, key: str) -> object:
    """The root option that overrides the setting, when it was given on this command line."""
    root = ctx.find_root()
    name = {"database_url": "database_url"}.get(key)
    if name and root.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
        return root.params.get(name)
    return None


@config_group.command("list", access="none")
@click.pass_context
def list_settings(ctx: click.Context) -> None:
    """Every setting, its value, and where the value comes from."""
    click.echo(f"settings file: {escape(str(config.settings_file()))}")
    for key, setting in config.SETTINGS.items():
        found = config.resolve(key, _flag(ctx, key))
        overrides = " > ".join(x for x in (setting.flag, setting.env and f"${setting.env}") if x)
        click.echo(f"{key} = {escape(_shown(setting, found.value))}    [{found.source}]")
        click.echo(f"    {setting.help}" + (f"; overridden by {overrides}" if overrides else ""))


@config_group.command(access="none")
@click.argument("key")
@click.pass_context
def get(ctx: click.Context, key: str) -> None:
    """Print the value KEY has for commands run here (empty when unset), unmasked."""
    found = config.resolve(key, _flag(ctx, key))
    click.echo("" if found.value is None else str(found.value))


@config_group.command("set", access="none")
@click.argument("key")
@click.argument("value")
def set_setting(key: str, value: str) -> None:
    """Store VALUE for KEY in the settings file."""
    setting = config.setting(key)
    if key == "model":
        from imagedb.embed import ModelSpec

        value = str(ModelSpec.parse(value))  # a misspelt architecture is refused here, not at the next ingest
    if not value.strip():
        raise click.UsageError(f"an empty value: to remove {key}, imagedb config unset {key}")
    path = config.write_setting(key, value)
    secret = " (mode 0600: it may hold a password)" if setting.secret else ""
    click.echo(f"{key} = {escape(_shown(setting, value.strip()))} stored in {escape(str(path))}{secret}")
    if setting.env and config.resolve(key).source.startswith("environment"):
        click.echo(f"note: ${setting.env} is set in this shell and still wins over the file", err=True)


@config_group.command(access="none")
@click.argument("key")
def unset(key: str) -> None:
    """Remove KEY from the settings file: the environment or the built-in default applies again."""
    config.setting(key)
    path = config.write_setting(key, None)
    click.echo(f"{key} removed from {escape(str(path))}")
