"""Where imagedb keeps its data, and which database and model it uses.

Precedence everywhere: command-line option > environment variable > default.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

DEFAULT_MODEL = "ViT-B-32:laion2b_s34b_b79k"
DEFAULT_COLLECTION = "default"
# HNSW candidate list for searches. pgvector's default of 40 gave recall@10 0.99 at 100k vectors but 0.91 at 250k
# and 0.82 at 500k (bench/results/growth.txt); 100 costs about a millisecond more.
DEFAULT_EF_SEARCH = 100
# Near-duplicate thresholds, chosen from the measured tables in docs/duplicates.md (bench/dupes_quality.py). 8 rather
# than 10: resizes, recompression, darkening and watermarks are caught alike at both; brightening loses 1 copy of 19
# and 10% crops drop to 0.84 (from 0.95), while two burst frames of one scene with the camera moved by 2% of the width
# are linked in 47% of pairs instead of 84%, and at 5% in 5% instead of 16%.
DEFAULT_MAX_HASH_DISTANCE = 8
# A watched image is compared in eight orientations, so eight times the chances of a false match: stricter.
DEFAULT_WATCH_MAX_DISTANCE = 8
DEFAULT_MIN_CLIP_SIMILARITY = 0.95


def home(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the embedded server's data: option > IMAGEDB_HOME > the platform's user data dir."""
    value = explicit or os.environ.get("IMAGEDB_HOME")
    return Path(value).expanduser().resolve() if value else Path(platformdirs.user_data_dir("imagedb"))


def database_url(explicit: str | None = None) -> str | None:
    """An external database's URL (option > IMAGEDB_DATABASE_URL), or None for the embedded server."""
    return explicit or os.environ.get("IMAGEDB_DATABASE_URL") or None


def new_collection_model() -> str:
    """The model a new collection is created with, when --model names none: IMAGEDB_MODEL > the default.

    The variable is read only when a collection is created: an existing collection always uses the model it
    was created with, whatever IMAGEDB_MODEL says (only an explicit --model of another model is refused)."""
    return os.environ.get("IMAGEDB_MODEL", "").strip() or DEFAULT_MODEL
