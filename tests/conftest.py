"""Fixtures: a real PostgreSQL with pgvector, a fresh migrated database per test, the tiny CLIP, real photos.

The server is the embedded one in a temporary folder, unless IMAGEDB_TEST_DATABASE_URL names an existing
server (the user needs CREATEDB) or IMAGEDB_TEST_DOCKER=1 asks for a testcontainers pgvector container.
"""

from __future__ import annotations

import itertools
import os

# No test may reach the network; set before huggingface_hub is imported, which reads it once.
os.environ["HF_HUB_OFFLINE"] = "1"
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg
import pytest
from PIL import Image

from imagedb.pg.database import open_connection
from imagedb.pg.embedded import embedded_url, stop_embedded
from imagedb.pg.migrate import upgrade
from imagedb.store import Store

from tiny_model import make_tiny_model

TEMPLATE_DB = "imagedb_test_template"
_OWN_BASETEMP = pytest.StashKey[str]()
_counter = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    """A temporary root of this run's own: pytest's shared one (/tmp/pytest-of-USER) is reset to mode 0700 by every
    other run as the same user, and the servers tests start as root run as the `pgserver` user, who then loses
    its way into their data directories mid-run."""
    if config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="imagedb-pytest-")
        config.stash[_OWN_BASETEMP] = config.option.basetemp


def pytest_unconfigure(config: pytest.Config) -> None:
    if (basetemp := config.stash.get(_OWN_BASETEMP, None)) is not None:
        shutil.rmtree(basetemp, ignore_errors=True)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("IMAGEDB_TEST_DATABASE_URL"):
        yield os.environ["IMAGEDB_TEST_DATABASE_URL"]
    elif os.environ.get("IMAGEDB_TEST_DOCKER") == "1":
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("pgvector/pgvector:pg17", driver=None) as container:
            yield container.get_connection_url()
    else:
        # Not under pytest's own temporary root: another pytest run as root resets that folder to mode 0700, and the
        # server (as root, it runs as the `pgserver` user) then loses its data directory mid-run.
        home = Path(tempfile.mkdtemp(prefix="imagedb-test-home-"))
        try:
            yield embedded_url(home)
        finally:
            stop_embedded(home)
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def template_url(server_url: str) -> str:
    """A database migrated to head once; each test copies it, which takes milliseconds."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
        conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    url = with_database(server_url, TEMPLATE_DB)
    upgrade(url)
    return url


@pytest.fixture
def database_url(server_url: str, template_url: str) -> Iterator[str]:
    name = f"imagedb_test_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
        # A copy does not take the template's ALTER DATABASE settings (the migrations' search_path): copy them.
        for (setting,) in conn.execute(
            "SELECT unnest(s.setconfig) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase"
            " WHERE d.datname = %s AND s.setrole = 0",
            (TEMPLATE_DB,),
        ).fetchall():
            key, value = setting.split("=", 1)
            conn.execute(f"ALTER DATABASE {name} SET {key} = {value}")
    yield with_database(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store(open_connection(database_url))
    yield s
    s.close()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The --model value of a tiny random CLIP checkpoint (see tiny_model.py)."""
    return make_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def photo_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photographs shipped by scikit-image, plus a few synthetic ones, as JPEG files."""
    import skimage.data

    folder = tmp_path_factory.mktemp("photo-source")
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field", "immunohistochemistry"):
        Image.fromarray(getattr(skimage.data, name)()).save(folder / f"{name}.jpg", quality=90)
    rng = np.random.default_rng(7)
    for i in range(5):
        pixels = (rng.random((96, 128, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(folder / f"noise_{i}.png")
    return folder


@pytest.fixture
def photos(photo_source: Path, tmp_path: Path) -> Path:
    """A private copy of the photos, so a test may add, change or break files."""
    folder = tmp_path / "photos"
    shutil.copytree(photo_source, folder)
    return folder
