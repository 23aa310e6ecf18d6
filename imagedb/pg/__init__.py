"""Reaching and running PostgreSQL: URLs and connections, the embedded server, listening and pg_hba, replicas,
backups and migrations. Below the store: nothing here imports imagedb's store or anything above it.

Modules, lowest first: cluster (the bundled programs and process), connection, listen, standby, embedded,
replicas, migrate, backup, database (the URL and connection a command uses).
"""
