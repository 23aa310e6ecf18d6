"""Ingest progress: the library reports phases to a callback; the CLI prints plain lines when not on a terminal."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from imagedb import embed
from imagedb.cli import main
from imagedb.embed import ModelSpec
from imagedb.ingest import ingest
from imagedb.progress import BUILDING_INDEX, EMBEDDING, LOADING_MODEL, SCANNING
from imagedb.store import Store


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, object, object]] = []

    def phase(self, name: str, total: int | None = None, detail: str = "") -> None:
        self.events.append(("phase", name, total))

    def advance(self, n: int = 1) -> None:
        self.events.append(("advance", n, None))


def _folder(path: Path, count: int) -> Path:
    path.mkdir()
    rng = np.random.default_rng(3)
    for i in range(count):
        Image.fromarray((rng.random((40, 50, 3)) * 255).astype("uint8")).save(path / f"img_{i:03d}.png")
    return path


def test_phases_are_reported_in_order_with_totals(store: Store, tmp_path: Path, tiny_model: str) -> None:
    folder = _folder(tmp_path / "many", 25)
    recorder = Recorder()
    summary = ingest(
        store, [folder], model=ModelSpec.parse(tiny_model), batch_size=8, progress=recorder, bulk_threshold=10
    )
    # The images/s of the summary line is over the embedding phase only: a first model load made it "1.0 images/s".
    assert 0 < summary.embedding_seconds < summary.seconds
    phases = [(name, total) for kind, name, total in recorder.events if kind == "phase"]
    assert phases == [(SCANNING, None), (LOADING_MODEL, None), (EMBEDDING, 25), (BUILDING_INDEX, None)]
    embedding = recorder.events.index(("phase", EMBEDDING, 25))
    steps = [n for kind, n, _ in recorder.events[embedding:] if kind == "advance"]
    assert steps == [8, 8, 8, 1]
    scanned = [n for kind, n, _ in recorder.events[:embedding] if kind == "advance"]
    assert sum(scanned) == 25

    again = Recorder()  # nothing new: no model load, no embedding phase
    ingest(store, [folder], progress=again)
    assert [name for kind, name, _ in again.events if kind == "phase"] == [SCANNING]


def test_plain_lines_on_stderr_when_not_a_terminal(
    database_url: str, tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embed, "_loaded", {})  # as in a new process: the model loads, and says so once
    folder = _folder(tmp_path / "many", 40)
    result = CliRunner().invoke(
        main, ["--database-url", database_url, "ingest", str(folder), "-m", tiny_model, "--batch-size", "4"]
    )
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[0] == "scanning: 40 files"
    assert re.fullmatch(r"loading imagedb-tiny-clip \(/\S+\.pt\) \.\.\.", lines[1]), lines[1]
    progress = [line for line in lines[2:] if line.startswith("embedding: ")]
    assert progress == lines[2:]  # nothing else: no bar, no carriage returns
    assert "\r" not in result.stderr
    # Every 10% (a batch of 4 is 10% of 40), with the rate and time left; the last line says how long it took.
    assert len(progress) == 10
    assert re.fullmatch(r"embedding: 4/40 \(10%, [\d.]+ img/s, about \d+ s left\)", progress[0]), progress[0]
    assert re.fullmatch(r"embedding: 40/40 in [\d.]+ s", progress[-1]), progress[-1]
    assert "added 40" in result.stdout  # the summary stays, on stdout
