"""Who may read and write: roles for BI tools and for ingest, and forgetting images for good."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from imagedb.collection import get_collection
from imagedb.errors import InvalidInput, NotFound
from imagedb.pg.limits import (
    LOCK_TIMEOUT_S,
    READER_LIMITS,
    WRITER_LIMITS,
    RoleLimits,
    harden_database,
    set_role_limits,
)
from imagedb.store import Store
from imagedb.store.admin import FORGET_TABLES

# What BI tools may see: plain metadata, no vectors, thumbnails, raw EXIF (which can hold GPS) or attributes.
READER_VIEWS = ("image_catalog", "collection_stats", "duplicate_report", "dicom_catalog")
# The SQL searches, which run as their owner and return ids, paths and scores, never vectors (migration 0012).
READER_FUNCTIONS = (
    "imagedb_nearest(halfvec, text, integer, integer, bigint, text)",
    "imagedb_similar(bigint, integer, integer, text)",
    "imagedb_search_text(text, text, integer, text)",
    "imagedb_search_hybrid(text, text, integer)",
)
# What ingest, tag, dupes, watch and tune write (never dicom_secret: writers hash DICOM UIDs through
# imagedb_uid_hash). Schema bookkeeping (alembic_version) and the model/collection
# registry are read-only for writers: a writer that changed them would break every owner command.
WRITER_TABLES = (
    "images",
    "embeddings",
    "thumbnails",
    "ingest_runs",
    "ingest_errors",
    "duplicate_groups",
    "watches",
    "watch_hashes",
    "watch_hits",
    "relevance_samples",
    "search_tuning",
    "dicom_images",
    "ingest_claims",  # ingests running at once share the files
    "forgotten",  # `forget` remembers what ingest must leave out
    "image_words",  # captions and OCR text; the triggers on images write it as the writer
)
# The text-query cache too: every search trusts a cached vector, so only the owner writes it (migration 0013); a
# writer's searches read it, and what they embed is not kept.
WRITER_READ_ONLY = (
    "alembic_version",
    "embedding_models",
    "collections",
    "collection_models",
    "text_embeddings",
    *READER_VIEWS,
)


# A password must be at least this long: the server answers about a hundred tries a second per connection, and
# imagedb's roles are reachable over TCP once `db listen` is on (NIST SP 800-63B asks for at least 8, 15 where a
# password is the only factor; 12 is what a generated one of 16 characters comfortably passes).
MIN_PASSWORD_LENGTH = 12
_MIN_DISTINCT = 6  # "aaaaaaaaaaaa" or "121212121212" are not passwords


# What a guesser's list tries first: keyboard rows and digit runs (either way), and the commonest password bases. A
# password must keep _MIN_REST characters once every such run or word (and each digit) is taken out of it.
_ROWS = ("1234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm", "abcdefghijklmnopqrstuvwxyz")
_RUNS = tuple(run for row in _ROWS for run in (row, row[::-1]))
_COMMON_BASES = (
    "password", "passwort", "passw0rd", "qwerty", "letmein", "welcome", "admin", "imagedb", "postgres", "secret",
    "dragon", "monkey", "iloveyou", "login", "master", "sunshine", "football", "changeme", "default", "root", "test",
)  # fmt: skip
_MIN_REST = 4


def _without(password: str, role: str) -> str:
    return password.replace(role, "").replace(role[::-1], "")


def _strip(password: str, words: Sequence[str]) -> str:
    """`password` without any piece of at least 4 characters of a run or word (or the whole word), nor digits."""
    rest = password
    for word in words:
        for size in range(len(word), 3, -1):  # longest pieces first
            for start in range(len(word) - size + 1):
                rest = rest.replace(word[start : start + size], "")
        rest = rest.replace(word, "")
    return "".join(c for c in rest if not c.isdigit())


@dataclass(frozen=True)
class Grant:
    created: bool  # the role did not exist before
    can_log_in: bool  # it has a password (the embedded server asks every login for one)
    limits: RoleLimits
    unset: tuple[str, ...] = ()  # limits this server would not let imagedb's role set
    promoted: bool = False  # an existing role that could not write before (a reader) and now can


@dataclass(frozen=True)
class Forgotten:
    ids: list[int]
    unvacuumed: list[str]  # tables this role may not VACUUM: the deleted rows' bytes stay there until the owner does
    # `full` only: the session whose older snapshot kept the deleted rows in the rewritten files (one line), and
    # whether pg_statistic could not be rewritten (its old file may hold the paths as sampled values).
    blocker: str | None = None
    statistics_kept: bool = False


def grant_reader(store: Store, role: str, password: str | None = None, limits: RoleLimits = READER_LIMITS) -> Grant:
    """SELECT on the BI views and EXECUTE on the SQL searches only; the role is created (LOGIN) if missing, and
    given `limits` (pg/limits.py)."""
    _check(limits)
    created = store.admin.grant(role, READER_VIEWS, "SELECT", checked_password(password, role), reader=True)
    store.admin.grant_execute(role, READER_FUNCTIONS)
    return _limited(store, role, created, limits)


def grant_writer(store: Store, role: str, password: str | None = None, limits: RoleLimits = WRITER_LIMITS) -> Grant:
    """What `imagedb ingest`, `search`, `tag`, `dupes`, `watch` and `forget` need, on existing collections and
    models; VACUUM of the tables `forget` touches where the server has the MAINTAIN privilege (PostgreSQL 17+)."""
    password = checked_password(password, role)
    could_write = bool(store.admin.writes_of(role))
    created = store.admin.grant(role, WRITER_TABLES, "SELECT, INSERT, UPDATE, DELETE", password)
    store.admin.grant(role, WRITER_READ_ONLY, "SELECT", None)
    store.admin.grant_maintain(role, FORGET_TABLES)
    store.admin.grant_sequences_and_functions(role)
    return replace(_limited(store, role, created, limits), promoted=not created and not could_write)


def _check(limits: RoleLimits) -> None:
    if problem := limits.problem():
        raise InvalidInput(problem)


def _limited(store: Store, role: str, created: bool, limits: RoleLimits) -> Grant:
    unset = set_role_limits(store.conn, role, limits)
    if not harden_database(store.conn):
        unset.append("large objects and temporary tables")
    return Grant(created, store.admin.has_password(role), limits, tuple(unset))


def generate_password() -> str:
    """A password of 22 random URL-safe characters (about 130 bits)."""
    return secrets.token_urlsafe(16)


def checked_password(password: str | None, role: str = "") -> str | None:
    """The password, unless it is one a guesser would try early: short, of few characters, or naming the role."""
    if password is None:
        return None
    if "\x00" in password:
        raise InvalidInput("a password cannot contain a NUL character")
    weak = None
    if len(password) < MIN_PASSWORD_LENGTH:
        weak = f"is shorter than {MIN_PASSWORD_LENGTH} characters"
    elif len(set(password)) < _MIN_DISTINCT:
        weak = f"has fewer than {_MIN_DISTINCT} different characters"
    elif len(role) >= 3 and len(_without(password.lower(), role.lower())) < MIN_PASSWORD_LENGTH:
        weak = "is little more than the role's name"
    elif len(_strip(password.lower(), (*_RUNS, *_COMMON_BASES))) < _MIN_REST:
        weak = "is mostly a keyboard or digit run or a common word (with digits)"
    if weak:
        raise InvalidInput(f"the password {weak}: choose a stronger one, or use --generate-password instead")
    return password


def forget(
    store: Store, collection: str, refs: Sequence[str], *, full: bool = False, by_content: bool = False
) -> Forgotten:
    """Delete the images named by id, path or file name and everything derived from them, then VACUUM. Ingest
    leaves their files out from then on (`by_content`: any file of the same bytes too), until unforget()."""
    target = get_collection(store, collection)
    ids, unvacuumed, horizon = store.admin.forget(target.id, list(refs), full=full, by_content=by_content)
    if not ids:
        raise NotFound(f"no image {', '.join(refs)} in collection {collection!r}: give ids, paths or file names")
    if not full:
        return Forgotten(ids, unvacuumed)
    return rewrite(store, ids, horizon)


def rewrite(
    store: Store, ids: list[int] | None = None, horizon: int | None = None, wait_s: float = LOCK_TIMEOUT_S
) -> Forgotten:
    """VACUUM FULL the tables forget deletes from, then re-gather their statistics and rewrite pg_statistic, so that
    no table file keeps a deleted row. First waits up to `wait_s` for sessions whose snapshot is older than
    transaction id `horizon` (None: every snapshot open now): VACUUM FULL copies the rows they can still see.
    Run again (`imagedb forget --full` with nothing left to match) once such a session has ended."""
    deadline = time.monotonic() + wait_s
    if horizon is None:  # fixed now: sessions starting later see no deleted row, and would never let a busy server pass
        horizon = store.admin.next_xid()
    older = store.admin.older_snapshot(horizon)
    while older is not None and time.monotonic() < deadline:
        time.sleep(0.2)
        older = store.admin.older_snapshot(horizon)
    unvacuumed = store.admin.vacuum(FORGET_TABLES, full=True)
    kept = not store.admin.rewrite_statistics([t for t in FORGET_TABLES if t not in unvacuumed])
    return Forgotten(ids or [], unvacuumed, _snapshot_line(older, wait_s) if older else None, kept)


def _snapshot_line(row: tuple[object, ...], wait_s: float) -> str:
    pid, role, application, seconds = row
    app = f", application {application!r}" if application else ""
    held = f", in a transaction for {seconds} s" if seconds is not None else ""
    return (
        f"waited {wait_s:g} s for session {pid} (role {role!r}{app}{held}), whose snapshot is older than the"
        f" deletion: the rows are deleted but their bytes may remain in the table files; end it with"
        f" `SELECT pg_terminate_backend({pid})` as imagedb's role (imagedb db psql), then run `imagedb forget --full`"
        " again"
    )


def unforget(store: Store, collection: str, refs: Sequence[str] | None) -> int:
    """Let ingest store forgotten files again: refs are paths or content SHA-256s, None all of them. Returns how
    many; NotFound when none matched."""
    target = get_collection(store, collection)
    absolute = [os.path.abspath(os.path.expanduser(r)) for r in refs or []]
    done = store.exclusions.unforget(target.id, None if refs is None else [*refs, *absolute])
    if not done:
        raise NotFound(f"nothing forgotten in collection {collection!r} matches {', '.join(refs or ['*'])}")
    return done
