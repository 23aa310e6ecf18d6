"""libpq's environment variables, kept away from the embedded server.

libpq fills every connection parameter a URL leaves unset from a PG* variable (PGPASSWORD, PGUSER, PGSERVICE,
PGSSLMODE...), in C, at each connect; psycopg reads PGHOST and PGPORT itself too. Left in a shell by a psql session
as a BI role, they break imagedb's own logins as the embedded server's owner ("password authentication failed for
user postgres"), and PGPORT even moves the socket of a server pg_ctl starts. No connection parameter turns the
lookup off (PGSERVICE has no "none" value: an empty service is looked up and not found), so a process that uses
the embedded server drops the variables from its environment before its first connection, and the bundled
programs it runs (pg_ctl, pg_basebackup, and through them the server itself) get an environment without them.

An external server (IMAGEDB_DATABASE_URL) is left alone: there libpq still takes from PG* variables what the URL
leaves unset, as every libpq program does.
"""

from __future__ import annotations

import os
import threading

# Every variable libpq 18 reads (its docs' "Environment Variables", and the names in libpq.so itself), plus pg_ctl's
# PGCTLTIMEOUT (our pg_ctl calls pass -t, but `stop` takes the default).
LIBPQ_VARIABLES = (
    "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGPASSFILE", "PGSERVICE",
    "PGSERVICEFILE", "PGSYSCONFDIR", "PGOPTIONS", "PGAPPNAME", "PGCHANNELBINDING", "PGCLIENTENCODING",
    "PGCONNECT_TIMEOUT", "PGTARGETSESSIONATTRS", "PGLOADBALANCEHOSTS", "PGREQUIREAUTH", "PGREQUIREPEER",
    "PGSSLMODE", "PGREQUIRESSL", "PGSSLNEGOTIATION", "PGSSLCOMPRESSION", "PGSSLCERT", "PGSSLKEY", "PGSSLCERTMODE",
    "PGSSLROOTCERT", "PGSSLCRL", "PGSSLCRLDIR", "PGSSLSNI", "PGSSLMINPROTOCOLVERSION", "PGSSLMAXPROTOCOLVERSION",
    "PGMINPROTOCOLVERSION", "PGMAXPROTOCOLVERSION", "PGGSSENCMODE", "PGKRBSRVNAME", "PGGSSLIB", "PGGSSDELEGATION",
    "PGOAUTHDEBUG", "PGDATESTYLE", "PGTZ", "PGGEQO", "PGCTLTIMEOUT",
)  # fmt: skip

_lock = threading.Lock()


def clean_environment() -> dict[str, str]:
    """This process's environment without libpq's variables: for the bundled programs run on the embedded server."""
    return {name: value for name, value in os.environ.items() if name not in LIBPQ_VARIABLES}


def ignore_libpq_environment() -> None:
    """Drop libpq's variables from this process's environment (libpq reads it in C, at every connect). A no-op, and
    no write to the environment, when none is set, which is the usual case."""
    if not any(name in os.environ for name in LIBPQ_VARIABLES):
        return
    with _lock:
        for name in LIBPQ_VARIABLES:
            os.environ.pop(name, None)
