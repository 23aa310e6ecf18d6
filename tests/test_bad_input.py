"""Bad files never stop a run: each is skipped, recorded with a reason, and nothing stored is touched."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from imagedb.cli import main
from imagedb.embed import ModelSpec
from imagedb.errors import InvalidInput, ModelMismatch, ModelUnavailable, NotFound
from imagedb.ingest import ingest
from imagedb.query import parse
from imagedb.request import MAX_OFFSET, SearchRequest
from imagedb.search import search
from imagedb.store import Store


def _make_bad_files(folder: Path) -> dict[str, str]:
    """file name -> a word the recorded reason must contain."""
    folder.mkdir()
    good = folder / "good.jpg"
    Image.new("RGB", (300, 200), (90, 90, 20)).save(good, quality=95)
    data = good.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "letter.jpg").write_text("Dear reader, this is text with an image extension.")
    # 12000 x 12000 one-bit pixels: a few kB on disk, 144 megapixels once decoded.
    Image.new("1", (12000, 12000)).save(folder / "bomb.png")
    os.symlink(folder / "gone.jpg", folder / "dangling.jpg")
    return {
        "truncated.jpg": "decode",
        "corrupt.png": "image",
        "empty.jpg": "empty",
        "letter.jpg": "not an image",
        "bomb.png": "decompression bomb",
        "dangling.jpg": "cannot read",
    }


@pytest.mark.slow
def test_bad_files_are_recorded_and_the_run_goes_on(
    store: Store, photos: Path, tmp_path: Path, tiny_model: str
) -> None:
    spec = ModelSpec.parse(tiny_model)
    ingest(store, [photos], model=spec)
    before = store.conn.execute("SELECT id, sha256 FROM images ORDER BY id").fetchall()

    expected = _make_bad_files(tmp_path / "bad")
    summary = ingest(store, [tmp_path / "bad"])
    assert (summary.added, summary.failed) == (1, len(expected))
    recorded = dict(store.images.run_errors(summary.run_id))
    assert {Path(p).name for p in recorded} == set(expected)
    for path, reason in recorded.items():
        assert expected[Path(path).name] in reason, (path, reason)

    after = store.conn.execute("SELECT id, sha256 FROM images ORDER BY id").fetchall()
    assert after[: len(before)] == before and len(after) == len(before) + 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_recorded(store: Store, tmp_path: Path, tiny_model: str) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    Image.new("RGB", (10, 10)).save(folder / "secret.png")
    (folder / "secret.png").chmod(0)
    summary = ingest(store, [folder], model=ModelSpec.parse(tiny_model))
    assert summary.failed == 1 and "cannot read" in summary.errors[0][1]


def test_missing_path_is_refused_before_anything_runs(store: Store, tiny_model: str) -> None:
    with pytest.raises(NotFound, match="no such file or folder"):
        ingest(store, ["/no/such/folder"], model=ModelSpec.parse(tiny_model))
    assert store.models.get_collection("default") is None


def test_a_collection_refuses_another_model(store: Store, photos: Path, tiny_model: str, tmp_path: Path) -> None:
    ingest(store, [photos / "coffee.jpg"], model=ModelSpec.parse(tiny_model))
    other = ModelSpec.parse("ViT-B-32:laion2b_s34b_b79k")
    with pytest.raises(ModelMismatch, match="searches with model imagedb-tiny-clip"):
        ingest(store, [photos], model=other)
    with pytest.raises(ModelMismatch):
        search(store, SearchRequest(parse(["coffee"]), model=other))
    assert store.conn.execute("SELECT count(*) FROM images").fetchone()[0] == 1


@pytest.mark.slow
def test_unloadable_models_give_one_clear_message(store: Store, photos: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="checkpoint file not found"):
        ingest(store, [photos], model=ModelSpec.parse(f"ViT-B-32:{tmp_path}/missing.pt"))
    with pytest.raises(ModelUnavailable, match="pass a local checkpoint"):
        ingest(store, [photos], model=ModelSpec.parse("ViT-B-32:no_such_tag"))
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelUnavailable, match="cannot load model"):
        ingest(store, [photos], model=ModelSpec.parse(f"ViT-B-32:{broken}"))
    assert store.models.get_collection("default") is None


def test_unreachable_weights_name_the_model_and_the_way_out(store: Store, photos: Path) -> None:
    # The real download path; conftest sets HF_HUB_OFFLINE so the hub client fails at once instead of retrying.
    with pytest.raises(ModelUnavailable) as info:
        ingest(store, [photos], model=ModelSpec.parse("ViT-B-32:laion2b_s34b_b79k"))
    message = str(info.value)
    assert "ViT-B-32:laion2b_s34b_b79k" in message and "--model ViT-B-32:/path/to/" in message
    assert "\n" not in message


def test_bad_search_queries(store: Store, photos: Path, tiny_model: str, tmp_path: Path) -> None:
    ingest(store, [photos / "coffee.jpg"], model=ModelSpec.parse(tiny_model))
    with pytest.raises(InvalidInput, match="the query is empty"):
        search(store, SearchRequest([]))
    with pytest.raises(InvalidInput, match="limit"):
        search(store, SearchRequest(parse(["a"]), limit=0))
    with pytest.raises(InvalidInput, match="min_score"):
        search(store, SearchRequest(parse(["a"]), min_score=2))
    with pytest.raises(NotFound, match="no stored image with id 999"):
        search(store, SearchRequest(parse(["id:999"])))
    with pytest.raises(NotFound, match="no collection named 'nope'"):
        search(store, SearchRequest(parse(["a"]), collection="nope"))
    (tmp_path / "fake.jpg").write_text("hello")
    with pytest.raises(InvalidInput, match="cannot use"):
        search(store, SearchRequest(parse([str(tmp_path / "fake.jpg")])))
    with pytest.raises(InvalidInput, match="cancel each other out"):
        search(store, SearchRequest(parse(["a cat", "-", "a cat"])))


def test_an_offset_past_what_a_search_can_reach_is_bad_usage(
    store: Store, photos: Path, tiny_model: str, database_url: str
) -> None:
    """An offset beyond PostgreSQL's bigint once reached the database ("bigint out of range", exit code 1); any
    offset past what an index scan reaches is now refused as bad usage, by the library and the CLI (exit code 2),
    with the bound the HTTP API already had."""
    ingest(store, [photos / "coffee.jpg", photos / "rocket.jpg"], model=ModelSpec.parse(tiny_model))
    with pytest.raises(InvalidInput, match="offset"):
        search(store, SearchRequest(parse(["id:1"]), offset=10**20))
    assert search(store, SearchRequest(parse(["id:1"]), offset=MAX_OFFSET)) == []
    for offset in ("99999999999999999999", str(MAX_OFFSET + 1)):
        result = CliRunner().invoke(main, ["--database-url", database_url, "search", "id:1", "--offset", offset])
        assert result.exit_code == 2 and "offset" in result.output and "database error" not in result.output


@pytest.mark.slow
def test_a_checkpoint_of_another_architecture_says_so(
    store: Store, photos: Path, tiny_model: str, tmp_path: Path
) -> None:
    """ViT-B-32 weights named as RN50 ended in "cannot load model ...: Error(s) in loading
    state_dict for CLIP:", a line that stops at its colon. Weights that do not fit the named architecture (other
    shapes, or tensors missing) now say so, and what to do."""
    import torch

    name, checkpoint = tiny_model.split(":", 1)
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(Path(checkpoint).with_name(f"{name}.json"), partial)
    state = torch.load(checkpoint, map_location="cpu")
    del state["state_dict"]["visual.proj"]
    torch.save(state, partial / "weights.pt")
    for spec in (f"ViT-B-32:{checkpoint}", f"{name}:{partial / 'weights.pt'}"):
        with pytest.raises(ModelUnavailable) as info:
            ingest(store, [photos / "coffee.jpg"], model=ModelSpec.parse(spec))
        message = str(info.value)
        assert f"do not fit the architecture {spec.split(':')[0]}" in message, message
        assert not message.endswith(":") and "\n" not in message
