"""The command line, through click's runner and once through the installed executable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from imagedb.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run(database_url: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    monkeypatch.delenv("IMAGEDB_MODEL", raising=False)

    def invoke(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


def test_ingest_then_search_as_table_and_json(run, photos: Path, tiny_model: str) -> None:  # type: ignore[no-untyped-def]
    result = run("ingest", photos, "--model", tiny_model, "--batch-size", "4")
    assert result.exit_code == 0, result.output
    assert "default: added 12, reused 0, skipped 0 unchanged, failed 0" in result.output

    result = run("ingest", photos)
    assert "added 0, reused 0, skipped 12 unchanged, failed 0" in result.output

    result = run("search", "a rocket", "--limit", "3")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split() == ["rank", "score", "relev", "id", "date", "path"] and len(lines) == 4

    result = run("search", "--image", photos / "coffee.jpg", "--json", "-k", "2")
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert rows[0]["path"] == str(photos / "coffee.jpg") and rows[0]["rank"] == 1 and len(rows) == 2

    result = run("search", "--like", rows[0]["id"], "--json", "-k", "1", "--ef-search", "100")
    assert json.loads(result.output)["id"] == rows[1]["id"]  # the image itself is left out

    info = run("db", "info").output
    assert "pgvector 0.8" in info and "collection default: 12 images, 12 embeddings" in info


def test_failures_are_listed_and_the_exit_code_is_zero(run, tmp_path: Path, tiny_model: str) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    Image.new("RGB", (32, 32), (1, 2, 3)).save(folder / "ok.jpg")
    result = run("ingest", folder, "--model", tiny_model)
    assert result.exit_code == 0
    assert "failed: " in result.output and "broken.jpg" in result.output
    assert "added 1, reused 0, skipped 0 unchanged, failed 1" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (("ingest", "/no/such/dir"), "no such file or folder: /no/such/dir"),
        (("search", "x", "--collection", "missing"), "no collection named 'missing'"),
        (("search",), "the query is empty"),
        (("search", "id:\u00b2"), "id: needs a number"),  # str.isdigit() takes the superscript, int() does not
        (("search", "x", "--limit", "0"), "Invalid value for '--limit'"),
        (("search", "x", "--bogus"), "No such option '--bogus'"),
        (("db", "reindex", "--m", "32", "--ef-construction", "40"), "must be at least 2 * m = 64"),
    ],
)
def test_errors_are_one_readable_line(run, args: tuple[str, ...], message: str) -> None:  # type: ignore[no-untyped-def]
    result = run(*args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_usage_errors_exit_with_2_and_runtime_errors_with_1(run) -> None:  # type: ignore[no-untyped-def]
    assert run("search").exit_code == 2
    assert run("search", "x", "-c", "missing").exit_code == 1


def test_a_database_that_is_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", f"postgresql://postgres@/imagedb?host={tmp_path}")
    result = CliRunner().invoke(main, ["search", "x"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot connect to the database")
    assert len(result.output.strip().splitlines()) == 1


def test_help_and_import_do_not_load_torch() -> None:
    code = "import sys, imagedb, imagedb.cli, imagedb.ingest, imagedb.search; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and "ingest" in result.output


@pytest.mark.slow
def test_installed_executable_end_to_end(database_url: str, photos: Path, tiny_model: str, tmp_path: Path) -> None:
    executable = shutil.which("imagedb", path=str(Path(sys.executable).parent)) or shutil.which("imagedb")
    assert executable, "the imagedb console script is not installed"
    env = {**os.environ, "IMAGEDB_DATABASE_URL": database_url, "IMAGEDB_MODEL": tiny_model}
    ingest = subprocess.run([executable, "ingest", str(photos)], env=env, capture_output=True, text=True)
    assert ingest.returncode == 0, ingest.stderr
    assert "added 12" in ingest.stdout
    found = subprocess.run(
        [executable, "search", "--image", str(photos / "rocket.jpg"), "--json", "-k", "1"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["path"] == str(photos / "rocket.jpg")


@pytest.mark.slow
def test_embedded_server_is_started_reused_and_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMAGEDB_DATABASE_URL", raising=False)
    monkeypatch.setenv("IMAGEDB_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    first = runner.invoke(main, ["db", "url"])
    assert first.exit_code == 0 and "/imagedb?host=" in first.output
    info = runner.invoke(main, ["db", "info"])
    assert "schema: up to date (revision" in info.output and "collections: none yet" in info.output
    assert runner.invoke(main, ["db", "url"]).output == first.output
    assert "embedded server stopped" in runner.invoke(main, ["db", "stop"]).output


def test_docker_compose_file_is_a_pgvector_server_on_loopback() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["postgres"]
    assert service["image"].startswith("pgvector/pgvector:")
    assert all(port.startswith("127.0.0.1:") for port in service["ports"])
    assert "pg_isready" in " ".join(service["healthcheck"]["test"])
    volume = service["volumes"][0].split(":")[0]
    assert volume in compose["volumes"]


def test_docker_compose_citus_profile_is_optional_and_built_with_pgvector() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    # A plain `docker compose up` starts the pgvector server alone.
    assert [name for name, s in services.items() if "profiles" not in s] == ["postgres"]
    citus = {name: s for name, s in services.items() if s.get("profiles") == ["citus"]}
    assert set(citus) == {"citus-coordinator", "citus-worker-1", "citus-worker-2"}
    dockerfile = (ROOT / "docker" / "citus" / "Dockerfile").read_text()
    base = next(line.split()[1] for line in dockerfile.splitlines() if line.startswith("FROM "))
    assert base.startswith("citusdata/citus:")
    assert "postgresql-17-pgvector" in dockerfile  # the citus image's PostgreSQL major version
    for name, service in citus.items():
        assert service["build"] == "./docker/citus"
        assert "pg_isready" in " ".join(service["healthcheck"]["test"])
        assert all(v.split(":")[0] in compose["volumes"] for v in service["volumes"])
        # Only the coordinator is reachable, and only from this machine; the workers trust the compose network.
        if name == "citus-coordinator":
            assert [p.startswith("127.0.0.1:") for p in service["ports"]] == [True]
            assert "citus.propagate_set_commands=local" in service["command"]
        else:
            assert "ports" not in service


def test_a_folder_given_as_an_image_is_called_a_folder(run, photos: Path, tiny_model: str) -> None:  # type: ignore[no-untyped-def]
    """`watch add FOLDER` and `search --image FOLDER` said "no such file" of a folder that
    exists, which sends the user looking for a typo."""
    assert run("ingest", photos / "coffee.jpg", "--model", tiny_model).exit_code == 0
    for args in (("watch", "add", photos), ("search", "--image", photos), ("search", f"{photos}/")):
        result = run(*args)
        assert result.exit_code == 2 and "is a folder" in result.output, (args, result.output)
        assert "no such" not in result.output
    # A device, the same: it exists, it is no regular file.
    for args in (("watch", "add", "/dev/zero"), ("search", "--image", "/dev/zero"), ("search", "/dev/null")):
        result = run(*args)
        assert result.exit_code == 2 and "not a regular file" in result.output, (args, result.output)
        assert "no such" not in result.output
