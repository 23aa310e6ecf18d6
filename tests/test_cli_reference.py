"""docs/cli.md is the commands' own help, generated: it must be what the CLI prints now."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from imagedb.cli import reference

ROOT = Path(__file__).resolve().parents[1]
REGENERATE = "python -m imagedb.cli.reference --write"


def test_docs_cli_md_is_the_generated_reference() -> None:
    assert reference.DOC == ROOT / "docs" / "cli.md"
    assert reference.DOC.read_text() == reference.render(), f"docs/cli.md is out of date: run `{REGENERATE}`"


def test_the_reference_covers_every_command() -> None:
    from imagedb.cli import main

    text = reference.render()
    assert text.count("```text\n") == text.count("\n## imagedb")
    for name in main.list_commands(None):  # type: ignore[arg-type]
        assert f"\n## imagedb {name}\n" in text, name
    for path in ("db replica create", "models add", "watch hits", "db listen"):
        assert f"\n## imagedb {path}\n" in text, path


def test_the_reference_does_not_depend_on_the_environment(tmp_path: Path) -> None:
    """Another terminal width, another HOME and every IMAGEDB_ variable set: the same text."""
    env = {
        **os.environ,
        "COLUMNS": "37",
        "HOME": str(tmp_path),
        "IMAGEDB_HOME": str(tmp_path / "home"),
        "IMAGEDB_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
        "IMAGEDB_MODEL": "RN50:openai",
        "IMAGEDB_API_TOKEN": "token",
        "IMAGEDB_ROLE_PASSWORD": "secret",
        # this checkout's imagedb, whatever the environment has installed
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "imagedb.cli.reference"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == reference.render()


def test_each_section_is_what_the_command_prints_for_help() -> None:
    """The reference is what `imagedb ... --help` prints at the same width, -h included."""
    from click.testing import CliRunner

    from imagedb.cli import main

    text = reference.render()
    for path in ([], ["search"], ["db", "replica", "create"], ["models", "add"]):
        printed = CliRunner().invoke(
            main,
            [*path, "--help"],
            prog_name="imagedb",
            terminal_width=reference.WIDTH,
            max_content_width=reference.WIDTH,
        )
        assert printed.exit_code == 0, printed.output
        heading = " ".join(["## imagedb", *path])
        assert f"{heading}\n\n```text\n{printed.output.rstrip()}\n```\n" in text, heading
