"""The open_clip architectures by name, read from open_clip's package folder without importing it (and torch):
a misspelt model name fails in a fraction of a second, with the closest names, instead of after the import."""

from __future__ import annotations

import difflib
import importlib.util
import sys
from functools import cache
from pathlib import Path

from imagedb.errors import InvalidInput


@cache
def _bundled() -> frozenset[str]:
    """The architectures open_clip ships as model_configs/NAME.json (empty when open_clip is not installed)."""
    found = importlib.util.find_spec("open_clip")
    if found is None or not found.submodule_search_locations:
        return frozenset()
    folders = [Path(p) / "model_configs" for p in found.submodule_search_locations]
    return frozenset(p.stem for folder in folders if folder.is_dir() for p in folder.glob("*.json"))


def known() -> set[str]:
    """Bundled architectures, and those registered in this process when open_clip is loaded already."""
    names = set(_bundled())
    open_clip = sys.modules.get("open_clip")
    if open_clip is not None:
        names.update(open_clip.list_models())
    return names


def check(name: str, checkpoint: Path | None) -> None:
    """Refuse an architecture open_clip does not know, unless a checkpoint brings its NAME.json along."""
    names = known()
    if not names or name in names:
        return  # without open_clip's folder nothing can be said here: loading says it
    if checkpoint is not None and (not checkpoint.is_file() or checkpoint.with_name(f"{name}.json").is_file()):
        return  # a moved or missing checkpoint (`models move`, `models drop`) is named by its old place
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    if not close:  # "vit-b-32": the case is what differs
        close = [n for n in sorted(names) if n.lower() == name.lower()]
    hint = f"did you mean {', '.join(close)}? " if close else ""
    beside = f" (no {name}.json beside {checkpoint})" if checkpoint is not None else ""
    raise InvalidInput(
        f"open_clip has no model architecture {name!r}{beside}: {hint}a custom architecture travels as"
        f" {name}.json beside its checkpoint (imagedb models import {name} FILE checks one)"
    )
