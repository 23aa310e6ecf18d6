"""Model weights kept with the data: `imagedb models fetch` downloads a model's hub weights into the home folder,
`imagedb models import` checks a checkpoint file against its architecture and copies it there; both record the
file's SHA-256 in `models/weights.toml`, so what a collection was embedded with can be found and checked again."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from imagedb import config, embed, provenance
from imagedb.embed import ModelSpec
from imagedb.errors import InvalidInput, ModelUnavailable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

RECORD = "weights.toml"


@dataclass(frozen=True)
class Weights:
    spec: str  # what --model, IMAGEDB_MODEL or `imagedb config set model` take to use them
    file: Path
    sha256: str
    size: int
    source: str  # "hub:REPO/FILE" or "import:ORIGINAL PATH"
    already: bool = False  # there before this call


def models_folder() -> Path:
    return config.home() / "models"


def recorded() -> dict[str, dict[str, Any]]:
    """The weights recorded so far, by spec."""
    path = models_folder() / RECORD
    try:
        with path.open("rb") as f:
            return dict(tomllib.load(f).get("weights", {}))
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path} is not valid TOML ({exc}): fix or delete it") from exc


def _record(weights: Weights) -> None:
    import tomli_w

    entries = recorded()
    entries[weights.spec] = {
        "file": str(weights.file),
        "sha256": weights.sha256,
        "bytes": weights.size,
        "source": weights.source,
        "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    folder = models_folder()
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=".weights-", suffix=".toml")
    with os.fdopen(descriptor, "wb") as out:
        tomli_w.dump({"weights": entries}, out)
    os.replace(temporary, folder / RECORD)


def fetch(spec: ModelSpec, progress_bar: type | None = None) -> Weights:
    """Download the hub weights of `spec` into the home folder's hub cache and record their SHA-256. Weights there
    already are only recorded. `progress_bar`: a tqdm class for the download (default: the hub client's bar, shown
    on a terminal only)."""
    import open_clip
    from huggingface_hub import constants, hf_hub_download

    hub = embed._hub_weights(spec, open_clip)
    if hub is None:
        if spec.checkpoint is not None or spec.name.startswith("local-dir:"):
            raise InvalidInput(f"{spec} is a file here already: imagedb models import {spec.name} FILE records one")
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(spec.name)[:6]) or "none"
        raise InvalidInput(
            f"open_clip downloads no weights of {spec} from the Hugging Face hub (tags of {spec.name} it knows:"
            f" {tags}): fetch one of those, or import a file with imagedb models import {spec.name} FILE"
        )
    repo, names = hub
    folder = embed.weights_folder()
    cached = embed.hub_cached(repo, names)
    if cached is not None and cached[0] == str(folder):
        return _recorded_weights(spec, Path(cached[1]), f"hub:{repo}/{cached[1].name}", already=True)
    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else embed.hub_unreachable()
    if why is not None:  # in seconds, not after the hub client's minute of retries
        raise ModelUnavailable(embed.missing_weights_message(spec, repo, names[0], why))
    folder.mkdir(parents=True, exist_ok=True)
    failure: Exception | None = None
    for name in names:  # the safetensors file when the repository has one, else the pickled one
        try:
            path = hf_hub_download(repo, name, cache_dir=str(folder), tqdm_class=progress_bar)
        except Exception as exc:  # noqa: BLE001 - not found, no network, refused: the next name, then one line
            failure = failure or exc
            continue
        return _recorded_weights(spec, Path(path), f"hub:{repo}/{name}")
    reason = (str(failure).strip().splitlines() or [type(failure).__name__])[0]
    raise ModelUnavailable(embed.missing_weights_message(spec, repo, names[0], f"the download failed ({reason})"))


def _recorded_weights(spec: ModelSpec, path: Path, source: str, already: bool = False) -> Weights:
    real = Path(os.path.realpath(path))
    digest, size = provenance.file_digest(real)
    weights = Weights(str(spec), real, digest, size, source, already)
    _record(weights)
    return weights


def import_checkpoint(name: str, file: Path) -> Weights:
    """Check that `file` loads into the open_clip architecture of `name`, keep a copy in the home folder and
    record its SHA-256.

    `ARCH:TAG` (ViT-B-32:laion2b_s34b_b79k): the file is put where `models fetch` would have downloaded the tag's
    weights, so the model keeps its name and loads offline. `ARCH` alone: the file is kept under its SHA-256 (with a
    custom architecture's ARCH.json beside it) and used as ARCH:/that/path."""
    source = file.expanduser().resolve()
    if not source.is_file():
        raise InvalidInput(f"no file {file}")
    arch, _, tag = name.partition(":")
    if arch.startswith(("hf-hub", "local-dir")) or (tag and os.sep in tag):
        raise InvalidInput(f"import takes an architecture, or ARCH:TAG, such as ViT-B-32:laion2b_s34b_b79k, not {name}")
    spec = ModelSpec.parse(f"{arch}:{source}")  # an unknown architecture fails here, before torch is imported
    tagged = ModelSpec.parse(name) if tag else None
    hub = _tag_weights(tagged) if tagged is not None else None
    _load_into(spec)
    digest, size = provenance.file_digest(source)
    if tagged is not None and hub is not None:
        return _import_as_hub_download(tagged, hub, source, digest, size)
    target_folder = models_folder() / "imported" / digest[:16]
    target = target_folder / source.name
    config_file = source.with_name(f"{spec.name}.json")
    already = target.is_file() and provenance.file_digest(target)[0] == digest
    if not already:
        target_folder.mkdir(parents=True, exist_ok=True)
        _copy(source, target)
    if config_file.is_file():
        _copy(config_file, target.with_name(config_file.name))
    weights = Weights(f"{spec.name}:{target}", target, digest, size, f"import:{source}", already)
    _record(weights)
    return weights


def _tag_weights(spec: ModelSpec) -> tuple[str, list[str]]:
    import open_clip

    hub = embed._hub_weights(spec, open_clip)
    if hub is None:
        raise InvalidInput(
            f"open_clip downloads no weights of {spec} from the Hugging Face hub, so there is no place to keep them"
            f" under that name: import the file as {spec.name} alone"
        )
    return hub


def _import_as_hub_download(
    spec: ModelSpec, hub: tuple[str, list[str]], source: Path, digest: str, size: int
) -> Weights:
    """Lay the file out as the hub client caches a download, under imagedb's hub folder: the tag's name then finds
    it offline (and with a network the hub client replaces it by its own download, should they differ)."""
    repo, names = hub
    pickled = [n for n in names if not n.endswith(".safetensors")]
    filename = names[0] if source.suffix == ".safetensors" or not pickled else pickled[0]
    revision = digest[:40]  # stands for a commit of the repository: the hub client reads it from refs/main
    repo_folder = embed.weights_folder() / f"models--{repo.replace('/', '--')}"
    target = repo_folder / "snapshots" / revision / filename
    already = target.is_file() and provenance.file_digest(target)[0] == digest
    if not already:
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy(source, target)
    (repo_folder / "refs").mkdir(exist_ok=True)
    (repo_folder / "refs" / "main").write_text(revision)
    weights = Weights(str(spec), target, digest, size, f"import:{source}", already)
    _record(weights)
    return weights


def _copy(source: Path, target: Path) -> None:
    """Whole or not at all: into a temporary file beside the target, then renamed over it."""
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=".import-")
    os.close(descriptor)
    try:
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _load_into(spec: ModelSpec) -> None:
    """Load the checkpoint into its architecture on the CPU: shapes and names must fit, or it is refused."""
    import open_clip

    checkpoint = spec.checkpoint
    assert checkpoint is not None
    config_file = checkpoint.with_name(f"{spec.name}.json")
    if spec.name not in open_clip.list_models() and config_file.is_file():
        open_clip.add_model_config(config_file)
    try:
        open_clip.create_model(spec.name, pretrained=str(checkpoint), device="cpu")
    except Exception as exc:  # noqa: BLE001 - torch and open_clip raise many kinds for a file that does not fit
        text = str(exc).strip()
        reason = (text.splitlines() or [type(exc).__name__])[0].split(". ")[0].rstrip(".:")
        raise InvalidInput(
            f"{checkpoint} does not load into the architecture {spec.name} ({reason}): name the architecture it was"
            f" saved from (a custom one with its NAME.json beside the file)"
        ) from exc
