"""Per-transaction server settings that reach Citus workers too.

`SET LOCAL` and `set_config(name, value, true)` do the same on one server, but Citus passes only the `SET LOCAL`
statements of a transaction block on to the workers, where a distributed table's index scans run, and only while
`citus.propagate_set_commands` is 'local' (measured: tests/test_citus.py). Setting that first, in the same
transaction, needs no cluster setting; on a server without Citus it is an unused placeholder that ends with the
transaction.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

# The settings imagedb changes per transaction; names are SQL text, so only these may be passed.
NAMES = frozenset(
    {"hnsw.ef_search", "hnsw.iterative_scan", "hnsw.max_scan_tuples", "enable_indexscan", "enable_bitmapscan"}
)


def set_local(conn: psycopg.Connection, settings: dict[str, str | int]) -> None:
    """SET LOCAL each setting in the open transaction, on the workers too under Citus; one round trip."""
    unknown = set(settings) - NAMES
    if unknown:
        raise ValueError(f"not a per-search setting: {sorted(unknown)}")
    statements = [sql.SQL("SET LOCAL citus.propagate_set_commands = 'local'")] + [
        sql.SQL("SET LOCAL {} = {}").format(sql.SQL(name), sql.Literal(str(value))) for name, value in settings.items()
    ]
    conn.execute(sql.SQL("; ").join(statements), prepare=False)
