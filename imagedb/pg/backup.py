"""Backups: the whole database to a pg_dump file, and back (`imagedb db dump` / `db restore`)."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from imagedb.errors import DatabaseUnavailable, InvalidInput, LockTimeout, NotFound
from imagedb.pg.cluster import client_output
from imagedb.pg.connection import connect
from imagedb.pg.limits import LOCK_TIMEOUT_S, blocker_line, lock_watch


def dump(url: str, file: Path) -> None:
    """Write the whole database to `file` in pg_dump's custom format, readable by its owner only: a dump holds
    everything, the paths, thumbnails and the key of the DICOM UID hashes included. pg_dump writes a new file
    beside it, which replaces `file` only once complete: a dump that fails leaves an older backup there intact."""
    target = file.resolve()  # through a symlink: the file it names is replaced, not the link
    if target.exists() and not target.is_file():
        raise InvalidInput(f"{file} is not a regular file: give the path of a dump file to write")
    try:
        descriptor, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        os.close(descriptor)  # mkstemp made it 0600, and pg_dump keeps the mode
    except OSError as exc:
        raise NotFound(f"cannot write the dump to {file}: {exc.strerror or exc}") from exc
    try:
        client_output(  # it fsyncs the file
            "pg_dump",
            ["--format=custom", f"--file={partial}", f"--dbname={url}", f"--lock-wait-timeout={LOCK_TIMEOUT_S}s"],
        )
        try:
            os.replace(partial, target)
        except OSError as exc:
            raise NotFound(f"cannot write the dump to {file}: {exc.strerror or exc}") from exc
    except DatabaseUnavailable as exc:
        Path(partial).unlink(missing_ok=True)
        _explain_lock_wait(url, exc)
        raise
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def restore(url: str, file: Path) -> None:
    """Replace the database's objects by those in a dump made with dump()."""
    if not file.is_file():
        raise NotFound(f"no such dump file: {file}")
    with tempfile.TemporaryDirectory(prefix="imagedb-restore-") as scratch:
        toc = _contents(file)
        _refuse_missing_grantees(url, file, toc, Path(scratch))
        args = ["--clean", "--if-exists", "--no-owner", "--single-transaction", f"--dbname={url}"]
        kept = toc
        if not _owns_vector_extension(url):
            kept = [line for line in kept if not _VECTOR_EXTENSION.search(_entry(line))]  # the one there stays
        if not _is_superuser(url):
            # The revokes on large-object functions (pg/limits.py) are a superuser's to make; where this server's
            # administrator made them already, a plain owner's REVOKE of them would fail the whole restore.
            kept = [line for line in kept if not _CATALOG_ACL.search(_entry(line))]
        if kept is not toc:
            args.append(f"--use-list={_listing(kept, Path(scratch) / 'restore.list')}")
        application = f"imagedb restore {os.getpid()}"
        with lock_watch(url, application) as blocked:
            try:
                client_output("pg_restore", [*args, str(file)], application)
            except DatabaseUnavailable as exc:
                _explain_missing_role(exc)
                if blocked:  # cancelled by the watch: its single transaction restored nothing
                    raise LockTimeout(blocked[0]) from exc
                raise


def _explain_lock_wait(url: str, exc: DatabaseUnavailable) -> None:
    """pg_dump or pg_restore gave up waiting for a lock: name the session that holds it, as other commands do."""
    # pg_dump --lock-wait-timeout waits under a statement_timeout: its LOCK TABLE ends as a statement timeout.
    if any(s in str(exc) for s in ("lock timeout", "could not obtain lock", "due to statement timeout")):
        with connect(url) as conn:
            raise LockTimeout(blocker_line(conn)) from exc


def _owns_vector_extension(url: str) -> bool:
    """Whether this login may drop and recreate the vector extension (pg_restore --clean does): not on a server
    where a superuser made it for imagedb's own role, as docs/operations.md tells one to."""
    with connect(url) as conn:
        row = conn.execute(
            "SELECT e.extowner = r.oid OR r.rolsuper FROM pg_roles r LEFT JOIN pg_extension e ON e.extname = 'vector'"
            " WHERE r.rolname = current_user"
        ).fetchone()
    return bool(row is None or row[0] is None or row[0])


def _is_superuser(url: str) -> bool:
    with connect(url) as conn:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    return bool(row and row[0])


_CATALOG_ACL = re.compile(r"\bACL pg_catalog ")  # privileges on the server's own functions, in a listing
_VECTOR_EXTENSION = re.compile(r"\bEXTENSION (- )?vector\b")  # the extension and its comment, in a listing
_ACL = re.compile(r"\bACL\b")  # GRANT and REVOKE entries, in a listing
_GRANTEE = re.compile(r"^GRANT .+ TO (\"(?:[^\"]|\"\")+\"|[^\s;]+)(?: WITH GRANT OPTION)?;$", re.MULTILINE)


def _contents(file: Path) -> list[str]:
    """The dump's table of contents (pg_restore --list): a line per entry, and comments."""
    return client_output("pg_restore", ["--list", str(file)]).splitlines()


def _entry(line: str) -> str:
    """What a --list line says of its entry ("TABLE public images imagedb"), after its id and catalog numbers."""
    return line.split(";", 1)[-1]


def _listing(lines: list[str], path: Path) -> Path:
    """A --use-list file: pg_restore restores these entries only."""
    path.write_text("\n".join(lines) + "\n")
    return path


def _refuse_missing_grantees(url: str, file: Path, toc: list[str], scratch: Path) -> None:
    """Roles belong to the server, not the dump: its GRANTs fail where grant-writer/-reader never ran (a fresh
    home). Every role missing is named before anything is touched, not the first one after a failed restore."""
    acl = [line for line in toc if not line.startswith(";") and _ACL.search(_entry(line))]
    if not acl:
        return
    grants = client_output("pg_restore", [f"--use-list={_listing(acl, scratch / 'acl.list')}", "--file=-", str(file)])
    names = {g[1:-1].replace('""', '"') if g.startswith('"') else g for g in _GRANTEE.findall(grants)} - {"PUBLIC"}
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT name FROM unnest(%s::text[]) AS name WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name)"
            " ORDER BY name",
            (sorted(names),),
        ).fetchall()
    missing = [name for (name,) in rows]
    if missing:
        raise _missing_roles(missing)


def _explain_missing_role(exc: DatabaseUnavailable) -> None:
    """A role dropped since the check above: the single transaction has restored nothing; say so, as above."""
    missing = re.search(r'role "(.+?)" does not exist', str(exc))
    if missing is not None:
        raise _missing_roles([missing.group(1)]) from exc


def _missing_roles(names: list[str]) -> NotFound:
    shown = ", ".join(repr(name) for name in names)  # repr: a role's name may hold any character, a newline too
    role = names[0] if len(names) == 1 else "ROLE"
    return NotFound(
        f"the dump grants rights to {'the role' if len(names) == 1 else 'the roles'} {shown}, which this server"
        f" lacks; nothing was restored: create {'it' if len(names) == 1 else 'each'} first (imagedb grant-writer"
        f" {role}, or grant-reader {role}, as on the server dumped), then rerun"
    )
