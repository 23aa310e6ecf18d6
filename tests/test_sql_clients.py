"""docs/bi.md's node-postgres and psql recipes, run as written by a reader over TCP (`imagedb db listen`), as a BI
user's client would. Each needs its client installed (node with the `pg` module, which `.ci/run` installs when npm
is present; psql is bundled) and skips in one line without it."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from imagedb.cli import main
from imagedb.pg.cluster import program
from imagedb.pg.database import open_connection
from imagedb.pg.embedded import stop_embedded
from imagedb.store import Store

from helpers import fill_synthetic

BI_DOC = Path(__file__).resolve().parents[1] / "docs" / "bi.md"
PASSWORD = "a-reader-password"
# Where .ci/run installs node-postgres (npm install --prefix DIR pg); IMAGEDB_TEST_NODE_PATH overrides it.
NODE_MODULES = Path(os.environ.get("IMAGEDB_TEST_NODE_PATH", Path.home() / ".cache" / "imagedb-test-node"))


def _block(language: str, containing: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", BI_DOC.read_text(), flags=re.S)
    return next(b for b in blocks if containing in b)


@pytest.fixture
def reader_url(tmp_path: Path) -> Iterator[str]:
    """A reader's URL over TCP to an embedded server holding a collection `default` of 512-d vectors."""
    home = tmp_path / "home"
    store = Store(open_connection(home=home))
    try:
        fill_synthetic(store, 60, dim=512, name="default")
    finally:
        store.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    try:
        for args in (["db", "listen", f"127.0.0.1:{port}"], ["grant-reader", "bi_reader", "--password", PASSWORD]):
            result = CliRunner().invoke(main, ["--home", str(home), *args], env={"IMAGEDB_DATABASE_URL": None})
            assert result.exit_code == 0, result.output
        yield f"postgresql://bi_reader:{PASSWORD}@127.0.0.1:{port}/imagedb"
    finally:
        stop_embedded(home)


@pytest.mark.slow
def test_the_node_postgres_recipe_runs_for_a_reader(reader_url: str, tmp_path: Path) -> None:
    if shutil.which("node") is None or not (NODE_MODULES / "node_modules" / "pg").is_dir():
        pytest.skip(f"node or node-postgres ({NODE_MODULES}/node_modules/pg) missing: the recipe was not run")
    script = tmp_path / "recipe.mjs"
    script.write_text(_block("javascript", 'from "pg"'))
    (tmp_path / "node_modules").symlink_to(NODE_MODULES / "node_modules")
    done = subprocess.run(
        ["node", str(script)], env={**os.environ, "IMAGEDB_URL": reader_url}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["10"]


@pytest.mark.slow
def test_the_psql_recipe_runs_for_a_reader(reader_url: str) -> None:
    line = next(ln for ln in _block("sh", "psql").splitlines() if ln.startswith("psql "))
    psql = program("psql")
    env = {"PATH": f"{Path(psql).parent}:/usr/bin:/bin", "IMAGEDB_URL": reader_url, "PGCONNECT_TIMEOUT": "10"}
    similar = subprocess.run(["bash", "-c", line.replace("(42, 10)", "(7, 10)")], env=env, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert similar.returncode == 0, similar.stderr
    assert "(10 rows)" in similar.stdout
    query = "SELECT embedding FROM imagedb_internal.embeddings LIMIT 1"  # the tables' schema (migration 0014)
    vectors = subprocess.run(["bash", "-c", f'psql "$IMAGEDB_URL" -c "{query}"'],
                             env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert vectors.returncode != 0 and "permission denied" in vectors.stderr
