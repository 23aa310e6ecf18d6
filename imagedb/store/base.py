"""What every part of the Store shares: one connection, in autocommit mode, and the store it belongs to.

The transaction discipline: the connection is in autocommit mode, so a statement outside a `transaction()`
block commits on its own and a read leaves no transaction open; every write of more than one statement runs in
`with self.conn.transaction():`, which commits when the block ends and rolls back if it raises. Nothing is left
pending for close() to roll back, so a command that says it stored something has committed it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import psycopg
from psycopg.pq import TransactionStatus

from imagedb.errors import ImagedbError

if TYPE_CHECKING:  # the parts reach each other through the store; only type checkers need its class here
    from imagedb.store import Store

_S = TypeVar("_S", bound="StoreBase")


class Part:
    """One family of tables' statements (images, models, index, ...), on the connection of the store that holds it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.conn = store.conn


class StoreBase:
    def __init__(self, conn: psycopg.Connection) -> None:
        if not conn.autocommit:
            raise ValueError("the store needs an autocommit connection (see imagedb.pg.connection.connect)")
        self.conn = conn

    def another(self: _S) -> _S:
        """A second store on the same database as the same role, for work alongside this one (ingest's writers)."""
        from pgvector.psycopg import register_vector

        info = self.conn.info
        from imagedb.pg.limits import set_lock_timeout

        conn = psycopg.connect(info.dsn, password=info.password or None, connect_timeout=10, autocommit=True)
        set_lock_timeout(conn)  # as the store's own connection (pg/connection.py)
        register_vector(conn)
        return type(self)(conn)

    def close(self, failing: bool = False) -> None:
        """Close the connection; a transaction left open is a bug, reported rather than silently rolled back.

        Not while the caller is `failing` already: its error is the one to report. A connection whose server went
        away mid-statement may not have noticed yet (libpq reads the FATAL message first, the end of the socket
        later), and reports that statement as still active: closing it is right, not a bug.
        """
        left_open = not self.conn.closed and self.conn.info.transaction_status != TransactionStatus.IDLE
        self.conn.close()
        if left_open and not failing:
            raise ImagedbError("internal error: a transaction was left open and has been rolled back")

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(failing=exc_type is not None)
