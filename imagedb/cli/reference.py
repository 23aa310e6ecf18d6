"""The CLI reference, docs/cli.md, generated from the commands themselves.

`python -m imagedb.cli.reference` prints it; `python -m imagedb.cli.reference --write` rewrites docs/cli.md
(tests/test_cli_reference.py checks that the file is what this prints). Each command's help is click's own,
rendered at a fixed width, so the output does not depend on the terminal or the environment.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import click

WIDTH = 100
DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
HEADER = """\
# imagedb command reference

Generated from the commands' own `--help` by `python -m imagedb.cli.reference --write`; do not edit by hand
(tests/test_cli_reference.py checks that this file is up to date). The [README](../README.md) shows the commands
in use; every command also answers `-h` / `--help`.
"""


def _walk(command: click.Command, ctx: click.Context) -> Iterator[click.Context]:
    """The context of `command` and of every command under it, depth first, subcommands in name order."""
    yield ctx
    if isinstance(command, click.Group):
        for name in sorted(command.list_commands(ctx)):
            sub = command.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            yield from _walk(sub, _context(sub, name, ctx))


def _context(command: click.Command, name: str, parent: click.Context | None) -> click.Context:
    # The command's own context_settings (e.g. -h as well as --help), as make_context would apply them; the widths
    # fixed, since click would otherwise ask the terminal (or $COLUMNS).
    settings = {**command.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    return click.Context(command, info_name=name, parent=parent, obj={}, **settings)


def render() -> str:
    """docs/cli.md: a heading per command path, then its help in a text block."""
    from imagedb.cli import main

    parts = [HEADER]
    for ctx in _walk(main, _context(main, "imagedb", None)):
        help_text = ctx.command.get_help(ctx).rstrip()
        parts.append(f"## {ctx.command_path}\n\n```text\n{help_text}\n```\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--write"]):
        print("usage: python -m imagedb.cli.reference [--write]", file=sys.stderr)
        return 2
    text = render()
    if args == ["--write"]:
        DOC.write_text(text)
        print(f"wrote {DOC}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
