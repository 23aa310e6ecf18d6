"""Each library error declares its exit code and HTTP status once, on its class, and the CLI and the API use them."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner
from fastapi import FastAPI
from fastapi.testclient import TestClient

import imagedb
from imagedb.api import handlers
from imagedb.api.bind import CannotListen
from imagedb.api.originals import OriginalChanged
from imagedb.cli.support import Command, Group
from imagedb.errors import (
    ConcurrentChange,
    DatabaseUnavailable,
    ImagedbError,
    InvalidInput,
    LockTimeout,
    ModelMismatch,
    ModelUnavailable,
    NotFound,
    NotReady,
    ReadOnlyReplica,
    SchemaOutOfDate,
)
from imagedb.pg.diskspace import DiskFull
from imagedb.provenance import CheckpointChanged
from imagedb.request import ParamError

# The mapping as it was before it moved onto the classes (the CLI's `_mapped`, `serve`'s `Refused`, the API's
# `_STATUS`): bad usage exits with 2, the rest with 1; a status where one was named, else 400.
EXPECTED: dict[type[ImagedbError], tuple[int, int]] = {
    ImagedbError: (1, 400),
    DatabaseUnavailable: (1, 503),
    SchemaOutOfDate: (1, 400),
    ModelUnavailable: (1, 503),
    CheckpointChanged: (1, 503),
    ModelMismatch: (2, 409),
    ConcurrentChange: (1, 409),
    NotFound: (1, 404),
    InvalidInput: (2, 400),
    ParamError: (2, 400),  # a bad search field, named as the surface that received it
    ReadOnlyReplica: (1, 400),
    NotReady: (1, 400),
    OriginalChanged: (1, 409),
    CannotListen: (1, 400),
    DiskFull: (1, 507),
    LockTimeout: (1, 503),  # another session holds a lock the command needs (pg/limits.py)
}


def _library_modules(package: object = imagedb, prefix: str = "imagedb.") -> list[str]:
    """Every module of the package except the CLI, the API and `python -m imagedb`, without importing them."""
    names = []
    for found in pkgutil.iter_modules(package.__path__, prefix):  # type: ignore[attr-defined]
        if found.name in ("imagedb.cli", "imagedb.api", "imagedb.__main__"):
            continue
        names.append(found.name)
        if found.ispkg:
            names += _library_modules(importlib.import_module(found.name), f"{found.name}.")
    return names


def _all_errors() -> list[type[ImagedbError]]:
    for name in _library_modules() + ["imagedb.api", "imagedb.cli"]:
        importlib.import_module(name)  # a subclass exists once its module is imported
    found, todo = [], [ImagedbError]
    while todo:
        kind = todo.pop()
        found.append(kind)
        todo += kind.__subclasses__()
    return [kind for kind in found if kind.__module__.startswith("imagedb.")]


def test_every_error_class_declares_its_exit_code_and_status() -> None:
    errors = _all_errors()
    assert set(errors) == set(EXPECTED), "a new error class: say here what it means to the CLI and the API"
    for kind in errors:
        assert (kind.exit_code, kind.http_status) == EXPECTED[kind], kind
        if kind is not ImagedbError:  # declared by the class or a kind it refines, not left to the base's default
            for attribute in ("exit_code", "http_status"):
                declared_by = next(c for c in kind.__mro__ if attribute in vars(c))
                assert declared_by is not ImagedbError, (kind, attribute)


def test_the_library_imports_neither_click_nor_fastapi() -> None:
    imports = "; ".join(f"import {name}" for name in _library_modules())
    check = f"import sys; {imports}; print(sorted({{'click', 'fastapi', 'starlette'}} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


@pytest.mark.parametrize("kind", list(EXPECTED), ids=lambda kind: kind.__name__)
def test_the_cli_exits_with_the_code_of_the_class(kind: type[ImagedbError]) -> None:
    @click.group(cls=Group)
    def cli() -> None:
        pass

    @cli.command(cls=Command, access="none")
    def fail() -> None:
        raise kind(f"{kind.__name__} happened")

    done = CliRunner().invoke(cli, ["fail"])
    assert done.exit_code == kind.exit_code, done.output
    assert done.output.rstrip().endswith(f"Error: {kind.__name__} happened")
    assert ("Usage: cli fail" in done.output) == (kind.exit_code == 2), done.output  # bad usage shows how to use


@pytest.mark.parametrize("kind", list(EXPECTED), ids=lambda kind: kind.__name__)
def test_the_api_answers_with_the_status_of_the_class(kind: type[ImagedbError]) -> None:
    app = FastAPI()
    handlers.install(app)

    @app.get("/fail")
    def fail() -> None:
        raise kind(f"{kind.__name__} happened")

    answer = TestClient(app).get("/fail")
    assert answer.status_code == kind.http_status
    assert ("retry-after" in answer.headers) == (kind.http_status == 503)
    if not issubclass(kind, ModelUnavailable):  # its message names the server's files: the log has it
        assert answer.json() == {"detail": f"{kind.__name__} happened"}
