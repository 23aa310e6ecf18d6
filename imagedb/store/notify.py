"""Announcing watch hits to LISTENers (imagedb/watch_feed.py) once they are committed."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import psycopg
from psycopg.pq import TransactionStatus

log = logging.getLogger(__name__)

CHANNEL = "imagedb_watch"


def notify_hits(conn: psycopg.Connection, hit_ids: Sequence[int]) -> None:
    """NOTIFY the channel once per hit, in a transaction of its own after the hits were committed.

    A notification is a hint: the hits are in watch_hits already. PostgreSQL raises a full NOTIFY queue (a
    listener idle in an open transaction while someone floods pg_notify: any login may) at COMMIT, so a NOTIFY in
    the batch's own transaction would fail the batch; here it costs only the announcement. Only the hit's id is
    sent: any login can NOTIFY this channel, so a listener reads the hit from watch_hits, which readers cannot
    write.
    """
    if not hit_ids:
        return
    if conn.info.transaction_status != TransactionStatus.IDLE:
        # Inside a caller's transaction, whose commit would raise the full queue: announce only while it has room.
        conn.execute(
            "SELECT pg_notify(%s, json_build_object('hit_id', id)::text) FROM unnest(%s::bigint[]) AS id"
            " WHERE pg_notification_queue_usage() < 0.5",
            (CHANNEL, list(hit_ids)),
        )
        return
    try:
        with conn.transaction():
            conn.execute(
                "SELECT pg_notify(%s, json_build_object('hit_id', id)::text) FROM unnest(%s::bigint[]) AS id",
                (CHANNEL, list(hit_ids)),
            )
    except psycopg.errors.ProgramLimitExceeded as exc:  # "too many notifications in the NOTIFY queue"
        log.warning("watch hits %s stored but not announced: %s", list(hit_ids)[:10], exc)
