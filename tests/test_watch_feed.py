"""A forged NOTIFY on imagedb_watch is not a hit (issue 22, item 13): any login can notify any channel, so the
payload carries a hit's id alone and a follower believes only what watch_hits holds."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import psycopg
import pytest
from click.testing import CliRunner
from PIL import Image

from imagedb.cli import main
from imagedb.dupes import add_watches
from imagedb.embed import ModelSpec
from imagedb.ingest import ingest
from imagedb.pg.database import open_connection
from imagedb.roles import grant_reader
from imagedb.store import Store
from imagedb.watch_feed import WatchFeed


def _login(url: str, role: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.split("@")[-1]
    query = "&".join(f"{k}={v[0]}" for k, v in parse_qs(parts.query).items() if k != "passfile")
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{host}", query=query))


@pytest.mark.slow
def test_a_readers_forged_notifications_are_dropped_and_real_hits_reported_once(
    store: Store, database_url: str, photos: Path, tmp_path: Path, tiny_model: str
) -> None:
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    [watched] = add_watches(store, [photos / "astronaut.jpg"], label="NASA")
    old_hit = store.dupes.watch_hits()[0]["id"]  # the astronaut already stored
    role = f"forger_{os.getpid()}"
    grant_reader(store, role, "reader-login-pw")
    with Store(open_connection(database_url)) as listening:
        feed = WatchFeed(listening)
        raw = psycopg.connect(database_url, autocommit=True)  # a program reading payloads as they come
        raw.execute("LISTEN imagedb_watch")
        with psycopg.connect(_login(database_url, role, "reader-login-pw"), autocommit=True) as forger:
            forger_pid = forger.info.backend_pid
            for payload in (
                json.dumps({"watch_id": watched.watch_id, "image_id": 1, "distance": 0}),  # the old payload's form
                json.dumps({"hit_id": old_hit}),  # a replay of a real, old hit
                json.dumps({"hit_id": 10**9}),  # no such hit
                json.dumps({"hit_id": True}),
                "not json",
                "[1, 2]",
            ):
                forger.execute("SELECT pg_notify('imagedb_watch', %s)", (payload,))
        assert feed.poll(1.0) == []
        upload = tmp_path / "uploads"
        upload.mkdir()
        Image.open(photos / "astronaut.jpg").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(upload / "mirrored.jpg")
        shutil.copy(photos / "coffee.jpg", upload / "unrelated.jpg")
        ingest(store, [upload])
        hits = feed.poll(2.0)
        assert [Path(h["path"]).name for h in hits] == ["mirrored.jpg"]
        assert hits[0]["watch_id"] == watched.watch_id and hits[0]["label"] == "NASA"
        # The real notification carries the id alone, and a second copy of it is not a second hit.
        real = [n.payload for n in raw.notifies(timeout=1) if n.pid != forger_pid]
        assert [json.loads(p) for p in real] == [{"hit_id": hits[0]["id"]}]
        raw.close()
        store.conn.execute("SELECT pg_notify('imagedb_watch', %s)", (json.dumps({"hit_id": hits[0]["id"]}),))
        assert feed.poll(1.0) == []


def test_watch_follow_stops_after_its_seconds_in_silence(store: Store, database_url: str) -> None:
    result = CliRunner().invoke(main, ["--database-url", database_url, "watch", "follow", "--seconds", "0.3"])
    assert result.exit_code == 0 and result.output == "", result.output
