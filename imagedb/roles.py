"""Who may read and write: roles for BI tools and for ingest, and forgetting images for good."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import psycopg

from imagedb.collection import get_collection
from imagedb.errors import InvalidInput, NotFound
from imagedb.pg.limits import (
    LOCK_TIMEOUT_S,
    READER_LIMITS,
    WRITER_LIMITS,
    RoleLimits,
    blocker_line,
    harden_database,
    set_role_limits,
)
from imagedb.pg.standby import SLOT_PREFIX
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
MAX_ROLE_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1: a longer name is cut without an error
# And it must take a guesser this many tries by zxcvbn's estimate (its score 4), which knows what guessers try first:
# common passwords and words, names, dates and years, keyboard walks, repeats and sequences, l33t and reversals. At a
# few thousand tries a second (every connection the server allows, guessing) that is weeks; score 3 (10^8) is hours.
MIN_GUESSES_LOG10 = 10
_ESTIMATED = 72  # zxcvbn reads at most this many characters (its time grows with the length): the first 72
_OWN_WORDS = ("imagedb", "postgres", "postgresql", "pgvector")  # what a guesser of this server tries with its name


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
    # Without `full`: the session whose older snapshot kept VACUUM from removing the deleted rows (one line).
    kept_by: str | None = None


def grant_reader(store: Store, role: str, password: str | None = None, limits: RoleLimits = READER_LIMITS) -> Grant:
    """SELECT on the BI views and EXECUTE on the SQL searches only; the role is created (LOGIN) if missing, and
    given `limits` (pg/limits.py)."""
    _check(limits)
    password = checked_password(password, checked_role(role))
    created = store.admin.grant(role, READER_VIEWS, "SELECT", password, reader=True)
    store.admin.grant_execute(role, READER_FUNCTIONS)
    return _limited(store, role, created, limits)


def grant_writer(store: Store, role: str, password: str | None = None, limits: RoleLimits = WRITER_LIMITS) -> Grant:
    """What `imagedb ingest`, `search`, `tag`, `dupes`, `watch` and `forget` need, on existing collections and
    models; VACUUM of the tables `forget` touches where the server has the MAINTAIN privilege (PostgreSQL 17+)."""
    password = checked_password(password, checked_role(role))
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


# Names PostgreSQL's grammar takes as something else where a role is named (GRANT ... TO public).
_RESERVED_ROLES = ("public", "none", "current_role", "current_user", "session_user")


def _utf8(text: str) -> bool:
    """False for a str holding undecodable bytes (a command line's non-UTF-8 arguments arrive as surrogates)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def checked_role(role: str) -> str:
    """The role's name, unless PostgreSQL would change it or it could not log in: longer than 63 bytes (silently
    cut), control characters (a newline cannot be written in a password file), or a name PostgreSQL reserves (pg_)
    or pg_hba.conf keeps off every database (a replica's role)."""
    if not _utf8(role):
        raise InvalidInput("a role's name must be UTF-8 text: it holds bytes that are not")
    if not role or len(role.encode()) > MAX_ROLE_BYTES:
        raise InvalidInput(f"a role's name has 1 to {MAX_ROLE_BYTES} bytes, not {len(role.encode())}")
    if role.lower() in _RESERVED_ROLES:
        raise InvalidInput(f"{role!r} is a word PostgreSQL reserves for roles: choose another name")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in role):
        raise InvalidInput("a role's name cannot hold control characters (a newline, a tab)")
    if role.startswith(("pg_", SLOT_PREFIX)):
        raise InvalidInput(f"names starting pg_ or {SLOT_PREFIX} are PostgreSQL's or replicas': choose another")
    return role


def checked_password(password: str | None, role: str = "") -> str | None:
    """The password, unless it is one a guesser would try early: short, or guessed in under 10^10 tries."""
    if password is None:
        return None
    if not _utf8(password):
        raise InvalidInput("a password must be UTF-8 text: it holds bytes that are not")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in password):
        raise InvalidInput("a password cannot hold control characters (a newline, a tab): it could not be typed or"
                           " stored in a password file")  # fmt: skip
    weak = None
    if len(password) < MIN_PASSWORD_LENGTH:
        weak = f"is shorter than {MIN_PASSWORD_LENGTH} characters"
    else:
        from zxcvbn import zxcvbn

        estimate = zxcvbn(password[:_ESTIMATED], user_inputs=[role, *role.replace("-", "_").split("_"), *_OWN_WORDS])
        if estimate["guesses_log10"] < MIN_GUESSES_LOG10:
            why = estimate["feedback"]["warning"].rstrip(".")
            weak = f"takes about 10^{int(estimate['guesses_log10'])} guesses{f' ({why.lower()})' if why else ''}"
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
        older = store.admin.older_snapshot(horizon)
        kept = None
        if older is not None:
            who, end = _holder(older)
            kept = (
                f"{who} has a snapshot older than the deletion, so VACUUM could not remove the rows: they stay in the"
                f" table and index files until it ends; {end}, then run `imagedb forget --full` to rewrite them"
            )
        return Forgotten(ids, unvacuumed, kept_by=kept)
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
    try:
        unvacuumed = store.admin.vacuum(FORGET_TABLES, full=True)
    except psycopg.errors.LockNotAvailable:  # a session holds a table: the deletion stands, the rewrite did not run
        return Forgotten(ids or [], [], blocker_line(store.conn))
    kept = not store.admin.rewrite_statistics([t for t in FORGET_TABLES if t not in unvacuumed])
    return Forgotten(ids or [], unvacuumed, _snapshot_line(older, wait_s) if older else None, kept)


def _holder(row: tuple[object, ...]) -> tuple[str, str]:
    """Who holds the old snapshot (a row of AdminStore.older_snapshot), and how it lets go."""
    pid, role, application, seconds = row
    if pid is None:
        return (
            f"replica slot {role} (the oldest snapshot on its standby, sent back by hot_standby_feedback)",
            "a running replica lets go within seconds of its own sessions' transactions ending (end a long one there"
            " with `SELECT pg_terminate_backend(PID)` in `imagedb --home REPLICA db psql`), a stopped one when it runs"
            " again or `imagedb db replica remove` drops it",
        )
    app = f", application {application!r}" if application else ""
    held = f", in a transaction for {seconds} s" if seconds is not None else ""
    return (
        f"session {pid} (role {role!r}{app}{held})",
        f"end it with `SELECT pg_terminate_backend({pid})` as imagedb's role (imagedb db psql)",
    )


def _snapshot_line(row: tuple[object, ...], wait_s: float) -> str:
    who, end = _holder(row)
    return (
        f"waited {wait_s:g} s for {who}, whose snapshot is older than the deletion: the rows are deleted but their"
        f" bytes may remain in the table files; {end}, then run `imagedb forget --full` again"
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
