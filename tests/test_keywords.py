"""Keyword search (docs/keywords.md): the words of file names, folders, attributes, captions (EXIF, IPTC, XMP) and
OCR text, found from the library, the CLI, the API and SQL, alone and fused with the vector ranking."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image
from test_sql_readers import PASSWORD, login

from imagedb.api import create_app
from imagedb.cli import main
from imagedb.embed import ModelSpec
from imagedb.ingest import ingest
from imagedb.query import parse, parse_string
from imagedb.request import SearchRequest
from imagedb.roles import grant_reader
from imagedb.search import search
from imagedb.store import Filters, Store


def _plain(path: Path, colour: tuple[int, int, int], **save: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (96, 96), colour).save(path, **save)
    return path


def _xmp(subjects: list[str], description: str) -> bytes:
    items = "".join(f"<rdf:li>{s}</rdf:li>" for s in subjects)
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/">'
        f"<dc:subject><rdf:Bag>{items}</rdf:Bag></dc:subject>"
        f'<dc:description><rdf:Alt><rdf:li xml:lang="x-default">{description}</rdf:li></rdf:Alt></dc:description>'
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
    ).encode()


@pytest.fixture
def worded(store: Store, tmp_path: Path, tiny_model: str) -> Path:
    folder = tmp_path / "library"
    for n in range(12):  # distractors with words of their own
        _plain(folder / "misc" / f"DSC_{1000 + n}_holiday.jpg", (20 * n, 100, 200 - 10 * n))
    _plain(folder / "scans" / "IMG_4711_invoice.jpg", (200, 30, 30))
    exif = Image.Exif()
    exif[0x010E] = "Sunset over the Tagus"  # ImageDescription
    exif[0x9C9E] = "Lisbon;tram".encode("utf-16-le")  # XPKeywords
    _plain(folder / "trip" / "P1000.jpg", (30, 200, 30), exif=exif)
    _plain(folder / "trip" / "P1001.jpg", (30, 30, 200), xmp=_xmp(["Porto", "azulejo"], "Blue tiles 增值税发票"))
    # XMP of binary junk and a 10,000-word caption: read what can be read, never fail the run
    _plain(folder / "trip" / "P1002.jpg", (90, 90, 90), xmp=bytes(range(256)) * 40)
    long = Image.Exif()
    long[0x010E] = " ".join(f"word{n}" for n in range(10_000)) + " needle"
    _plain(folder / "trip" / "P1003.png", (120, 90, 60), exif=long)  # JPEG holds 64 KB of EXIF
    summary = ingest(store, [folder], model=ModelSpec.parse(tiny_model))
    assert summary.failed == 0 and summary.words is not None and summary.words.captions == 17
    return folder


def _names(results) -> list[str]:  # type: ignore[no-untyped-def]
    return [Path(r.path).name for r in results]


def test_lexemes_split_names_and_cut_chinese_into_bigrams(store: Store) -> None:
    assert store.keywords.lexemes("IMG_4711_invoice.jpg") == ["img", "4711", "invoice", "jpg"]
    # a document leaves out the file's suffix, which nearly every image shares
    document = store.conn.execute(
        "SELECT keyword_document('/a/b/c/Lisbon 2024/IMG_4711_invoice.jpg', '{}', NULL, NULL)::text"
    ).fetchone()[0]
    assert "jpg" not in document and "'lisbon'" in document and "'invoice'" in document and "'a'" not in document
    assert store.keywords.lexemes("增值税发票 Café") == ["增值", "值税", "税发", "发票", "café"]
    assert store.keywords.lexemes("it's \\ 'quoted' \x01") == ["it", "s", "quoted"]


def test_words_of_names_exif_and_xmp_rank_first(store: Store, worded: Path) -> None:
    for query, expected in [
        ("kw:invoice", "IMG_4711_invoice.jpg"),
        ("kw:4711", "IMG_4711_invoice.jpg"),
        ("kw:lisbon", "P1000.jpg"),
        ("kw:tagus", "P1000.jpg"),
        ("kw:azulejo", "P1001.jpg"),
        ('kw:"blue tiles"', "P1001.jpg"),
        ("kw:发票", "P1001.jpg"),
        ("kw:needle", "P1003.png"),
    ]:
        results = search(store, SearchRequest(parse_string(query), limit=5))
        assert _names(results)[:1] == [expected], query
        assert results[0].keyword_rank == 1 and results[0].matched, query
    # a phrase holds its words in order; -kw: excludes
    assert search(store, SearchRequest(parse_string('kw:"tiles blue"'))) == []
    assert "IMG_4711_invoice.jpg" not in _names(search(store, SearchRequest(parse_string("red -kw:invoice"), limit=20)))
    # a kw: condition on a vector search: every result holds its words, and says so
    held = search(store, SearchRequest(parse_string("red kw:holiday"), limit=20))
    assert len(held) == 12 and {r.matched for r in held} == {("holiday",)}


def test_hybrid_fuses_vector_and_words(store: Store, worded: Path) -> None:
    results = search(store, SearchRequest(parse(["invoice"]), hybrid=True, limit=5))
    top = results[0]
    assert _names(results)[0] == "IMG_4711_invoice.jpg"
    assert top.keyword_rank == 1 and top.vector_rank is not None and top.matched == ("invoice",)
    assert -1 <= top.score <= 1
    assert len(results) == 5  # the vector ranking fills the page
    # a filter still gives k results
    kept = search(store, SearchRequest(parse(["invoice"]), hybrid=True, limit=3, filters=Filters(path="*/misc/*")))
    assert len(kept) == 3 and all("/misc/" in r.path for r in kept)


def test_a_keyword_ranking_reads_the_gin_index(store: Store, worded: Path) -> None:
    from imagedb.collection import get_collection

    target = get_collection(store, "default")
    store.conn.execute(  # 5,000 more images (no vectors needed), so that walking them all costs more
        "INSERT INTO images (collection_id, path, sha256, size_bytes, mtime, width, height, format)"
        " SELECT %s, '/more/DSC_' || n || '.jpg', 'x', 1, now(), 1, 1, 'JPEG' FROM generate_series(1, 5000) n",
        (target.id,),
    )
    store.conn.execute("ANALYZE images")
    store.conn.execute("VACUUM ANALYZE image_words")  # flushes the GIN pending list, as autovacuum does
    plan = store.keywords.explain_ranked(target, "invoice")
    assert "image_words_document_idx" in plan, plan


def test_attribute_change_updates_words(store: Store, worded: Path) -> None:
    from imagedb.attributes import tag

    tag(store, "default", str(worded / "misc" / "DSC_1003_holiday.jpg"), {"mood": "favourite"})
    results = search(store, SearchRequest(parse_string("kw:favourite")))
    assert _names(results) == ["DSC_1003_holiday.jpg"]


@pytest.fixture
def cli(database_url: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    return lambda *args: CliRunner().invoke(main, [str(a) for a in args])


def test_cli_finds_words_and_says_why(cli, worded: Path) -> None:  # type: ignore[no-untyped-def]
    result = cli("search", "invoice", "--hybrid", "--json", "-k", "3")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert Path(rows[0]["path"]).name == "IMG_4711_invoice.jpg"
    assert rows[0]["keyword_rank"] == 1 and rows[0]["matched"] == ["invoice"] and rows[0]["vector_rank"] >= 1
    table = cli("search", "kw:lisbon")
    assert table.exit_code == 0 and "kw#1 lisbon" in table.output and "P1000.jpg" in table.output
    chinese = cli("search", "blue", "--keyword", "发票", "--paths")
    assert chinese.exit_code == 0 and chinese.output.strip().endswith("P1001.jpg")
    assert cli("search", "kw:发票", "--paths").output.strip().endswith("P1001.jpg")
    status = cli("keywords", "status")
    assert status.exit_code == 0 and "images: 17" in status.output and "with caption: 3" in status.output
    for excluded in (["red", "-", "kw:invoice"], ["red -kw:invoice"]):
        paths = cli("search", *excluded, "--paths", "-k", "20").output
        assert "IMG_4711_invoice.jpg" not in paths and "P1001.jpg" in paths, excluded
    for bad in (["kw:"], ["kw:  ...  "], ["--keyword", "!!", "x"]):
        refused = cli("search", *bad)
        error = refused.output.strip().splitlines()[-1]
        assert refused.exit_code == 2 and error.startswith("Error: ") and "Traceback" not in refused.output
        assert "kw:" in error or "keyword" in error, refused.output


def test_api_finds_words_and_says_why(database_url: str, worded: Path) -> None:
    with TestClient(create_app(database_url), base_url="http://localhost") as client:
        body = client.get("/api/search", params={"q": "invoice", "hybrid": "true", "limit": 3}).json()
        top = body["results"][0]
        assert Path(top["path"]).name == "IMG_4711_invoice.jpg" and top["matched"] == ["invoice"]
        assert top["keyword_rank"] == 1
        only = client.get("/api/search", params={"q": "kw:azulejo"}).json()["results"]
        assert [Path(r["path"]).name for r in only] == ["P1001.jpg"]
        filtered = client.get("/api/search", params={"q": "red", "keyword": "tram", "limit": 5}).json()["results"]
        assert [Path(r["path"]).name for r in filtered] == ["P1000.jpg"]
        bad = client.get("/api/search", params={"q": "kw:--"})
        assert bad.status_code == 400 and "kw:" in bad.json()["detail"]


def test_a_reader_finds_words_in_sql(store: Store, database_url: str, worded: Path) -> None:
    role = f"kw_reader_{os.getpid()}"
    grant_reader(store, role, PASSWORD)
    with psycopg.connect(login(database_url, role), autocommit=True) as conn:
        # never searched: no cached vector, so the keywords alone rank (score NULL)
        rows = conn.execute(
            "SELECT path, score, keyword_rank, matched FROM imagedb_search_hybrid('invoice', 'default', 5)"
        ).fetchall()
        assert Path(rows[0][0]).name == "IMG_4711_invoice.jpg" and rows[0][1] is None and rows[0][3] == ["invoice"]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # captions and OCR text stay the owner's
            conn.execute("SELECT caption FROM imagedb_internal.image_words")
        chinese = conn.execute("SELECT path, matched FROM imagedb_search_hybrid('发票', 'default')").fetchall()
        assert [Path(p).name for p, _ in chinese] == ["P1001.jpg"] and chinese[0][1] == ["发票"]
    search(store, SearchRequest(parse(["tram"]), hybrid=True))  # caches the text's vector
    with psycopg.connect(login(database_url, role), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT path, score, vector_rank, keyword_rank FROM imagedb_search_hybrid('tram', 'default', 4)"
        ).fetchall()
        assert Path(rows[0][0]).name == "P1000.jpg" and rows[0][1] is not None and rows[0][3] == 1
        assert len(rows) == 4 and all(r[2] is not None for r in rows[1:])
        for args, message in [
            (("", "default", 5), "the query is empty"),
            (("x", "default", 0), "k must be between 1 and 1000"),
            (("x", "nope\x01", 5), r"no collection named 'nope\\x01'"),
            (("x" * 10_001, "default", 5), "at most 10000"),
        ]:
            with pytest.raises(psycopg.errors.RaiseException, match=message) as info:
                conn.execute("SELECT * FROM imagedb_search_hybrid(%s, %s, %s)", args)
            assert "\n" not in (info.value.diag.message_primary or "\n")


@pytest.mark.slow
def test_the_migration_indexes_stored_images_and_grants_old_roles(server_url: str) -> None:
    """Images stored before revision "keywords" get their words from it; readers and writers made before it may
    call the hybrid function and write image_words; the downgrade removes it all."""
    from alembic import command
    from sqlalchemy import create_engine

    from imagedb.pg.connection import sqlalchemy_url
    from imagedb.pg.migrate import alembic_config

    from conftest import with_database

    name = f"imagedb_keywords_migration_{os.getpid()}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    url = with_database(server_url, name)
    engine = create_engine(sqlalchemy_url(url))
    cfg = alembic_config()

    def migrate(step: object, revision: str) -> None:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            step(cfg, revision)  # type: ignore[operator]

    reader, writer = f"kw_old_reader_{os.getpid()}", f"kw_old_writer_{os.getpid()}"
    try:
        migrate(command.upgrade, "internal")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET search_path = imagedb_internal, public")
            model = conn.execute(
                "INSERT INTO embedding_models (name, pretrained, dim) VALUES ('m', '', 4) RETURNING id"
            ).fetchone()[0]
            collection = conn.execute(
                "INSERT INTO collections (name, model_id) VALUES ('default', %s) RETURNING id", (model,)
            ).fetchone()[0]
            conn.execute(
                "INSERT INTO images (collection_id, path, sha256, size_bytes, mtime, width, height, format, attributes)"
                " VALUES (%s, '/scans/IMG_4711_invoice.jpg', 'x', 1, now(), 1, 1, 'JPEG', '{\"place\": \"Lisbon\"}')",
                (collection,),
            )
            for role in (reader, writer):
                conn.execute(f"DROP ROLE IF EXISTS {role}")
                conn.execute(f"CREATE ROLE {role}")
            conn.execute(f"GRANT EXECUTE ON FUNCTION public.imagedb_search_text(text, text, integer, text) TO {reader}")
            conn.execute(f"GRANT SELECT, INSERT ON imagedb_internal.images TO {writer}")
        migrate(command.upgrade, "head")
        with psycopg.connect(url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT path, matched FROM imagedb_search_hybrid('lisbon invoice', 'default')"
            ).fetchall()
            assert rows == [("/scans/IMG_4711_invoice.jpg", ["invoice", "lisbon"])]
            hybrid = "public.imagedb_search_hybrid(text, text, integer)"
            can = "SELECT has_function_privilege(%s, %s, 'EXECUTE')"
            assert [conn.execute(can, (r, hybrid)).fetchone()[0] for r in (reader, "public")] == [True, False]
            assert conn.execute(
                "SELECT has_table_privilege(%s, 'imagedb_internal.image_words', 'INSERT')", (writer,)
            ).fetchone()[0]
        migrate(command.downgrade, "internal")
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT to_regclass('imagedb_internal.image_words')").fetchone()[0] is None
            conn.execute(
                "INSERT INTO imagedb_internal.images (collection_id, path, sha256, size_bytes, mtime, width, height,"
                " format) SELECT collection_id, '/b.jpg', 'y', 1, now(), 1, 1, 'JPEG' FROM imagedb_internal.images"
            )  # no trigger left behind
        migrate(command.upgrade, "head")
    finally:
        engine.dispose()
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            for role in (reader, writer):
                conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_dicom_words_are_the_kept_header(store: Store, worded: Path) -> None:
    from imagedb.keywords import refresh

    image_id = store.conn.execute("SELECT id FROM images WHERE path LIKE '%%P1000.jpg'").fetchone()[0]
    # a DICOM image as ingest stores it: its de-identified header in dicom_images, no caption read yet
    store.conn.execute("UPDATE images SET format = 'DICOM' WHERE id = %s", (image_id,))
    store.conn.execute("UPDATE image_words SET caption = NULL WHERE image_id = %s", (image_id,))
    store.conn.execute(
        "INSERT INTO dicom_images (image_id, modality, body_part, header) VALUES (%s, 'CT', 'CHEST',"
        ' \'{"Manufacturer": "Acme Medical", "PatientName": "never read"}\')',
        (image_id,),
    )
    summary = refresh(store, "default")
    assert summary.captions == 1 and summary.with_caption == 1
    for word in ("chest", "acme", "ct"):
        assert _names(search(store, SearchRequest(parse_string(f"kw:{word}")))) == ["P1000.jpg"], word
    assert search(store, SearchRequest(parse_string("kw:never"))) == []
