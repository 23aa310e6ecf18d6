"""Where imagedb keeps its data, and which database and model it uses: every setting, declared once.

Precedence everywhere: command-line option > environment variable > the settings file > the built-in default.
The settings file is `config.toml` in the home folder (`$IMAGEDB_HOME`, else the platform's user data folder):
`imagedb config set/get/list/unset` edit and show it. It is written with mode 0600, since a database URL in it may
hold a password.
"""

from __future__ import annotations

import contextvars
import difflib
import fcntl
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from imagedb.errors import InvalidInput

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

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


# The --home of the command being run: the CLI sets it for the command's duration, so that settings read deep in the
# library (a new collection's model) come from that home's file, as the database does.
HOME_OPTION: contextvars.ContextVar[str | None] = contextvars.ContextVar("imagedb_home_option", default=None)
SETTINGS_FILE = "config.toml"


def home(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the embedded server's data: option > IMAGEDB_HOME > the platform's user data dir."""
    value = explicit or HOME_OPTION.get() or os.environ.get("IMAGEDB_HOME")
    return Path(value).expanduser().resolve() if value else Path(platformdirs.user_data_dir("imagedb"))


@dataclass(frozen=True)
class Setting:
    """A setting that persists in the settings file; `flag` and `env` are what override it, in that order."""

    key: str  # as in the file: a dotted key is a table ("serve.port" is `port` under `[serve]`)
    help: str
    default: str | int | None = None
    env: str | None = None
    flag: str | None = None
    kind: type = str
    secret: bool = False  # shown masked by `config list`


SETTINGS: dict[str, Setting] = {
    s.key: s
    for s in (
        Setting(
            "model",
            "model a new collection is created with (an existing one keeps its own)",
            DEFAULT_MODEL,
            env="IMAGEDB_MODEL",
            flag="--model",
        ),
        Setting(
            "database_url",
            "PostgreSQL with pgvector to use; unset: the embedded server",
            env="IMAGEDB_DATABASE_URL",
            flag="--database-url",
            secret=True,
        ),
        Setting("serve.host", "address imagedb serve listens on", "127.0.0.1", flag="--host"),
        Setting("serve.port", "TCP port imagedb serve listens on", 8000, flag="--port", kind=int),
        Setting(
            "serve.token",
            "token imagedb serve asks API clients for",
            env="IMAGEDB_API_TOKEN",
            flag="--token",
            secret=True,
        ),
    )
}


@dataclass(frozen=True)
class Value:
    value: str | int | None
    source: str  # "flag", "environment (NAME)", "file (PATH)" or "built-in"


def setting(key: str) -> Setting:
    found = SETTINGS.get(key)
    if found is None:
        close = difflib.get_close_matches(key, SETTINGS, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise InvalidInput(f"no setting {key!r}: {hint}the settings are {', '.join(SETTINGS)}")
    return found


def settings_file(home_folder: str | os.PathLike[str] | None = None) -> Path:
    return home(home_folder) / SETTINGS_FILE


def read_settings(home_folder: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The settings file as flat dotted keys; {} when there is none. A file that is not TOML fails in one line."""
    path = settings_file(home_folder)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"the settings file {path} is not valid TOML ({exc}): fix or delete it") from exc
    flat: dict[str, Any] = {}

    def walk(table: dict[str, Any], prefix: str) -> None:
        for name, value in table.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{name}.")
            else:
                flat[f"{prefix}{name}"] = value

    walk(data, "")
    return flat


def resolve(key: str, flag: Any = None, home_folder: str | os.PathLike[str] | None = None) -> Value:
    """A setting's value and where it came from: flag > environment > file > built-in."""
    s = setting(key)
    if flag is not None and flag != "":
        return Value(flag, "flag")
    if s.env and os.environ.get(s.env, "").strip():
        return Value(_typed(s, os.environ[s.env].strip(), s.env), f"environment ({s.env})")
    path = settings_file(home_folder)
    stored = read_settings(home_folder).get(key)
    if stored is not None and stored != "":
        return Value(_typed(s, stored, str(path)), f"file ({path})")
    return Value(s.default, "built-in")


def _typed(s: Setting, value: Any, where: str) -> str | int:
    if s.kind is int:
        try:
            return int(value)
        except (TypeError, ValueError):
            raise InvalidInput(f"{s.key} must be a whole number, not {value!r} (from {where})") from None
    if not isinstance(value, str):
        raise InvalidInput(f"{s.key} must be a string, not {value!r} (from {where})")
    return value


def write_setting(key: str, value: str | None, home_folder: str | os.PathLike[str] | None = None) -> Path:
    """Set (or, with None, remove) one setting in the file; written whole to a new file of mode 0600 and renamed
    over the old one, so a reader never sees half a file and a password in it is never readable by others."""
    s = setting(key)
    typed = None if value is None else _typed(s, value.strip(), "the command line")  # checked before anything is made
    path = settings_file(home_folder)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Two `config set` at once: each reads, changes and writes the whole file, so one waits for the other rather
    # than writing back a file without the other's value.
    with open(path.parent / ".config.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _rewrite(key, typed, path, home_folder)


def _rewrite(key: str, value: str | int | None, path: Path, home_folder: str | os.PathLike[str] | None) -> Path:
    import tomli_w

    flat = read_settings(home_folder)
    if value is None:
        flat.pop(key, None)
    else:
        flat[key] = value
    nested: dict[str, Any] = {}
    for name, item in flat.items():
        *tables, last = name.split(".")
        table = nested
        for part in tables:
            table = table.setdefault(part, {})
        table[last] = item
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".toml")  # mode 0600
    try:
        with os.fdopen(descriptor, "wb") as out:
            tomli_w.dump(nested, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def database_url(explicit: str | None = None, home_folder: str | os.PathLike[str] | None = None) -> str | None:
    """An external database's URL (option > IMAGEDB_DATABASE_URL > the settings file), or None for the embedded
    server."""
    value = resolve("database_url", explicit, home_folder).value
    return str(value) if value else None


def new_collection_model(home_folder: str | os.PathLike[str] | None = None) -> str:
    """The model a new collection is created with, when --model names none: IMAGEDB_MODEL > the settings file >
    the default.

    Read only when a collection is created: an existing collection always uses the model it was created with,
    whatever IMAGEDB_MODEL or the file say (only an explicit --model of another model is refused)."""
    return str(resolve("model", None, home_folder).value)
