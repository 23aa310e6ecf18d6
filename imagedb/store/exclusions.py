"""What an ingest leaves out: files that failed and have not changed since, and files `imagedb forget` removed."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime

from imagedb.store.base import Part
from imagedb.store.records import FILE_OF_SQL, FRAME_MARK

# The key of a forgotten file: the SHA-256 of its path. An image row's file is its path, but for a frame of a DICOM
# file of several frames (dicom_images says so), stored as FILE#frame=N: a file may be named like that itself.
_ROW_FILE_SQL = (
    "CASE WHEN EXISTS (SELECT 1 FROM dicom_images d WHERE d.image_id = images.id AND d.frames > 1"
    f" AND images.path = {FILE_OF_SQL.format('images.path')} || '{FRAME_MARK}' || d.frame)"
    f" THEN {FILE_OF_SQL.format('images.path')} ELSE images.path END"
)
_PATH_KEY_SQL = f"encode(sha256(convert_to({_ROW_FILE_SQL}, 'UTF8')), 'hex')"


def path_key(path: str) -> str:
    """What forgotten.path_sha256 holds for a file's path (as stored: valid UTF-8, see files.readable)."""
    return hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()


class ExclusionsStore(Part):
    def failed_states(self, collection_id: int) -> dict[str, tuple[int, datetime]]:
        """path -> (size, mtime) the file had when it last failed in the collection (errors recorded before
        revision "claims" have none, and are retried)."""
        rows = self.conn.execute(
            "SELECT DISTINCT ON (e.path) e.path, e.size_bytes, e.mtime FROM ingest_errors e"
            " JOIN ingest_runs r ON r.id = e.run_id WHERE r.collection_id = %s ORDER BY e.path, e.id DESC",
            (collection_id,),
        ).fetchall()
        return {path: (size, mtime) for path, size, mtime in rows if size is not None and mtime is not None}

    def forgotten(self, collection_id: int) -> tuple[set[str], set[str]]:
        """The paths (as path_key()s) and the content hashes `imagedb forget` keeps out of the collection."""
        rows = self.conn.execute(
            "SELECT path_sha256, sha256 FROM forgotten WHERE collection_id = %s", (collection_id,)
        ).fetchall()
        return {key for key, _ in rows}, {sha for _, sha in rows if sha is not None}

    def remember_forgotten(self, collection_id: int, ids: Sequence[int], *, by_hash: bool) -> None:
        """Record the files of these images (before they are deleted, in the caller's transaction)."""
        self.conn.execute(
            f"INSERT INTO forgotten (collection_id, path_sha256, sha256)"
            f" SELECT DISTINCT ON (1, 2) collection_id, {_PATH_KEY_SQL}, CASE WHEN %s THEN sha256 END"
            " FROM images WHERE collection_id = %s AND id = ANY(%s)"
            " ON CONFLICT (collection_id, path_sha256) DO UPDATE"
            " SET sha256 = COALESCE(excluded.sha256, forgotten.sha256), forgotten_at = excluded.forgotten_at",
            (by_hash, collection_id, list(ids)),
        )

    def unforget(self, collection_id: int, refs: Sequence[str] | None) -> int:
        """Let ingest store these again: refs are paths or content SHA-256s; None is every one. Returns how many
        files are no longer left out."""
        with self.conn.transaction():
            if refs is None:
                cur = self.conn.execute("DELETE FROM forgotten WHERE collection_id = %s", (collection_id,))
            else:
                cur = self.conn.execute(
                    "DELETE FROM forgotten WHERE collection_id = %s AND (path_sha256 = ANY(%s) OR sha256 = ANY(%s))",
                    (collection_id, [path_key(r) for r in refs], list(refs)),
                )
        return cur.rowcount

    def unforget_paths(self, collection_id: int, paths: Sequence[str]) -> None:
        """Let these exact paths in again (ingest --include-forgotten)."""
        with self.conn.transaction():
            self.conn.execute(
                "DELETE FROM forgotten WHERE collection_id = %s AND path_sha256 = ANY(%s)",
                (collection_id, [path_key(p) for p in paths]),
            )

    def excluded_count(self, collection_id: int) -> int:
        row = self.conn.execute("SELECT count(*) FROM forgotten WHERE collection_id = %s", (collection_id,))
        return int(row.fetchone()[0])  # type: ignore[index]

    def remove_files(self, collection_id: int, paths: Sequence[str]) -> int:
        """Delete the images of files (with their DICOM frames) and of folders (everything under them) that left
        a watched folder; nothing is remembered, so they come back if they return. Returns how many went."""
        with self.conn.transaction():
            cur = self.conn.execute(
                f"DELETE FROM images i WHERE i.collection_id = %s AND ({FILE_OF_SQL.format('i.path')} = ANY(%s)"
                " OR EXISTS (SELECT 1 FROM unnest(%s::text[]) AS f(p) WHERE starts_with(i.path, f.p || '/')))",
                (collection_id, list(paths), list(paths)),
            )
        return cur.rowcount
