"""Reaching and running PostgreSQL: URLs and connections, the embedded server, listening and pg_hba, replicas,
backups and migrations. Below the store: nothing here imports imagedb's store or anything above it.

Modules, lowest first: environment (libpq's PG* variables), cluster (the bundled programs and process),
connection, listen, standby, embedded, replicas, migrate, backup, service (a systemd unit for the embedded server),
database (the URL and connection a command uses).
"""
