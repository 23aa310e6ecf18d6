"""Search latency while an HNSW index is rebuilt: the old way (DROP INDEX + CREATE INDEX in one transaction) against
imagedb's (CREATE INDEX CONCURRENTLY under a new name, DROP INDEX CONCURRENTLY the old one, rename), on the primary
and on a streaming standby set up by hand (pg_basebackup of the embedded server). Then the bulk-ingest choice for a
model whose index already serves searches: load into the index, or load and build a new index concurrently after.

    python bench/rebuild_bench.py --n 50000      # prints tables, writes bench/results/rebuild.json
    python bench/rebuild_bench.py --no-standby   # the primary only

One thread searches the primary and one the standby without pause (Store.nearest, limit 10, one query vector each),
from 2 s before the rebuild until the standby has replayed it; a third samples the standby's replay lag.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import numpy as np
import psycopg
from common import DIM, clustered_vectors, image_record, write_results
from psycopg import sql

from imagedb.pg.cluster import pgserver
from imagedb.pg.database import open_connection
from imagedb.pg.embedded import PASSFILE, embedded_url, stop_embedded
from imagedb.store import Store
from imagedb.store.index import DEFAULT_HNSW, _create_sql, hnsw_index_name


def _vectors(n: int, rng: np.random.Generator) -> np.ndarray:
    """n unit vectors around n / 500 centres (at least 10), spread 0.3, computed in float32."""
    return clustered_vectors(n, rng, spread=0.3, centres=max(n // 500, 10), noise_dtype=np.float32)


def _load(store: Store, collection_id: int, model_id: int, vectors: np.ndarray, prefix: str, offset: int = 0) -> None:
    run = store.images.start_run(collection_id)
    for start in range(0, len(vectors), 2000):
        stop = min(start + 2000, len(vectors))
        now = datetime.now(timezone.utc)
        records = [
            image_record(f"/{prefix}/{i:07d}.jpg", f"{prefix}{i:060x}", now)
            for i in range(offset + start, offset + stop)
        ]
        store.images.write_batch(collection_id, model_id, run, records, list(vectors[start:stop]), [])
    store.images.finish_run(run, len(vectors), 0, 0, 0)


def _first_load(store: Store, name: str, vectors: np.ndarray) -> tuple[object, float]:
    """A model's first load, as a bulk ingest does it: without the index, built after."""
    model_id = store.models.ensure_model(name, "", DIM)
    collection = store.models.create_collection(name, model_id)
    started = time.perf_counter()
    params = store.index.drop_hnsw_index(model_id)
    _load(store, collection.id, model_id, vectors, name)
    store.index.restore_hnsw_index(model_id, DIM, params)
    store.conn.execute("ANALYZE embeddings")
    return collection, time.perf_counter() - started


def _old_rebuild(store: Store, model_id: int) -> None:
    """What `imagedb db reindex` did before: one transaction, the table locked ACCESS EXCLUSIVE throughout."""
    name = hnsw_index_name(model_id)
    with store.conn.transaction():
        store.conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(name)))
        store.conn.execute("SELECT set_config('maintenance_work_mem', '1GB', true)")
        store.conn.execute(_create_sql(name, model_id, DIM, DEFAULT_HNSW, concurrently=False))


class Searcher(threading.Thread):
    def __init__(self, url: str, collection: object, query: np.ndarray) -> None:
        super().__init__(daemon=True)
        self.store = Store(open_connection(url))
        self.collection, self.query = collection, query
        self.stop = threading.Event()
        self.samples: list[tuple[float, float, str | None]] = []  # (start, seconds, error)

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            error = None
            try:
                self.store.search.nearest(self.collection, self.query, 10)  # type: ignore[arg-type]
            except psycopg.Error as exc:
                error = str(exc).splitlines()[0]
            self.samples.append((started, time.perf_counter() - started, error))
        self.store.close()


def _stats(samples: list[tuple[float, float, str | None]], t0: float, t1: float) -> dict[str, object]:
    """Searches that overlapped [t0, t1]."""
    inside = [(s, d, e) for s, d, e in samples if s <= t1 and s + d >= t0]
    ms = np.array([d * 1000 for _, d, e in inside if e is None]) if inside else np.array([])
    errors = sorted({e for _, _, e in inside if e})
    return {
        "searches": len(inside),
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
        "max_ms": float(max(d for _, d, _ in inside) * 1000) if inside else None,
        "errors": sum(1 for _, _, e in inside if e),
        "error_messages": errors,
    }


def _standby(home: Path, url: str) -> tuple[Path, str, object]:
    """A streaming standby of the embedded server, by hand (see docs/scaling.md)."""
    wheel = pgserver()
    server = wheel.get_server(home / "pgdata", cleanup_mode=None, start=False)
    user = server.system_user if os.geteuid() == 0 else None
    standby = Path(tempfile.mkdtemp(prefix="imagedb-standby-"))
    password = (home / PASSFILE).read_text().strip().rsplit(":", 1)[1]
    if user:
        shutil.chown(standby, user)
    standby.chmod(0o700)
    env = {**os.environ, "PGPASSWORD": password}
    bin_path = server.bin_path
    run = {"check": True, "env": env, "user": user, "capture_output": True, "text": True}
    subprocess.run(
        [str(bin_path / "pg_basebackup"), "-h", str(home / "pgdata"), "-U", "postgres", "-D", str(standby),
         "-R", "-X", "stream", "-C", "-S", "bench_standby", "-c", "fast"],
        **run,
    )  # fmt: skip
    for leftover in (".s.PGSQL.5432.lock", ".handle_pids.json", "postmaster.pid"):
        (standby / leftover).unlink(missing_ok=True)
    # The copied postgresql.auto.conf holds the primary's connection; the password travels in a passfile.
    passfile = standby / "replication.pgpass"
    passfile.write_text(f"*:*:*:postgres:{password}\n")
    if user:
        shutil.chown(passfile, user)
    passfile.chmod(0o600)
    with open(standby / "postgresql.auto.conf", "a") as conf:
        conf.write(f"primary_conninfo = 'user=postgres host={home / 'pgdata'} passfile={passfile}'\n")
    subprocess.run(
        [str(bin_path / "pg_ctl"), "-w", "-D", str(standby), "-l", str(standby / "log.txt"),
         "-o", f"-h '' -k {standby}", "start"],
        **run,
    )  # fmt: skip
    standby_url = f"postgresql://postgres@/imagedb?host={quote(str(standby))}&passfile={quote(str(home / PASSFILE))}"
    return standby, standby_url, (bin_path, run)


def _caught_up(primary: psycopg.Connection) -> bool:
    row = primary.execute(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) FROM pg_stat_replication"
    ).fetchone()
    return row is not None and row[0] is not None and row[0] <= 0


def _measure(
    method: str, store: Store, url: str, standby_url: str | None, collection: object, query: np.ndarray
) -> dict[str, object]:
    searchers = {"primary": Searcher(url, collection, query)}
    if standby_url:
        searchers["standby"] = Searcher(standby_url, collection, query)
    lag: list[float] = []
    sampling = threading.Event()

    def sample_lag() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            while not sampling.is_set():
                row = conn.execute("SELECT extract(epoch FROM replay_lag) FROM pg_stat_replication").fetchone()
                lag.append(float(row[0]) if row and row[0] is not None else 0.0)
                time.sleep(0.1)

    lagger = threading.Thread(target=sample_lag, daemon=True)
    for s in searchers.values():
        s.start()
    if standby_url:
        lagger.start()
    time.sleep(2)
    t0 = time.perf_counter()
    if method == "old":
        _old_rebuild(store, collection.model_id)  # type: ignore[attr-defined]
    else:
        store.index.rebuild_hnsw_index(collection.model_id, DIM, DEFAULT_HNSW)  # type: ignore[attr-defined]
    t1 = time.perf_counter()
    if standby_url:
        while not _caught_up(store.conn) and time.perf_counter() - t1 < 120:
            time.sleep(0.1)
    t2 = time.perf_counter()
    time.sleep(2)
    sampling.set()
    for s in searchers.values():
        s.stop.set()
        s.join(120)
    result: dict[str, object] = {"rebuild_s": t1 - t0, "standby_caught_up_s": t2 - t1 if standby_url else None}
    for where, s in searchers.items():
        result[where] = _stats(s.samples, t0, t2)
        result[f"{where}_before"] = _stats(s.samples, t0 - 2, t0)
    result["max_replay_lag_s"] = max(lag) if lag else None
    return result


def _threshold_case(store: Store, rng: np.random.Generator, n: int) -> dict[str, float]:
    """The bulk-ingest threshold: a model with n embeddings and its index, then n more. (A) load into the index;
    (B) the same load and a concurrent rebuild after it; (C, the old way, no index meanwhile) drop, load, build."""
    out: dict[str, float] = {"n": n}
    a, _ = _first_load(store, "threshold-a", _vectors(n, rng))
    started = time.perf_counter()
    _load(store, a.id, a.model_id, _vectors(n, rng), "threshold-a", offset=n)  # type: ignore[attr-defined]
    out["load_into_index_s"] = time.perf_counter() - started
    started = time.perf_counter()
    store.index.rebuild_hnsw_index(a.model_id, DIM, DEFAULT_HNSW)  # type: ignore[attr-defined]
    out["concurrent_rebuild_after_s"] = time.perf_counter() - started
    out["load_then_concurrent_rebuild_s"] = out["load_into_index_s"] + out["concurrent_rebuild_after_s"]
    c, _ = _first_load(store, "threshold-c", _vectors(n, rng))
    started = time.perf_counter()
    params = store.index.drop_hnsw_index(c.model_id)  # type: ignore[attr-defined]
    _load(store, c.id, c.model_id, _vectors(n, rng), "threshold-c", offset=n)  # type: ignore[attr-defined]
    store.index.restore_hnsw_index(c.model_id, DIM, params)  # type: ignore[attr-defined]
    out["old_drop_load_build_s"] = time.perf_counter() - started
    return out


def _row(label: str, r: dict[str, object]) -> str:
    def f(v: object) -> str:
        return "-" if v is None else f"{v:.1f}"

    return (
        f"  {label:<22} {r['searches']:>8} {f(r['p50_ms']):>8} {f(r['p99_ms']):>9} {f(r['max_ms']):>9}"
        f" {r['errors']:>7}  {'; '.join(r['error_messages'])[:80]}"  # type: ignore[arg-type]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--threshold-n", type=int, default=5_000)
    parser.add_argument("--no-standby", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    home = Path(tempfile.mkdtemp(prefix="imagedb-bench-"))
    store = Store(open_connection(None, home))  # the embedded server, migrated
    url = embedded_url(home)
    collection, load_s = _first_load(store, "bench-512", _vectors(args.n, rng))
    query = _vectors(1, rng)[0]
    standby, standby_url, control = (None, None, None) if args.no_standby else _standby(home, url)
    results: dict[str, object] = {"n": args.n, "dim": DIM, "first_load_s": load_s, "standby": standby is not None}
    try:
        if standby_url:
            deadline = time.perf_counter() + 60
            while not _caught_up(store.conn) and time.perf_counter() < deadline:
                time.sleep(0.2)
        results["old"] = _measure("old", store, url, standby_url, collection, query)
        results["new"] = _measure("new", store, url, standby_url, collection, query)
        results["threshold"] = _threshold_case(store, rng, args.threshold_n)
    finally:
        store.close()
        if control:
            bin_path, run = control  # type: ignore[misc]
            subprocess.run([str(bin_path / "pg_ctl"), "-w", "-D", str(standby), "stop", "-m", "fast"], **run)
        stop_embedded(home)
        for folder in (standby, home):
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
    print(f"== HNSW rebuild of {args.n:,} x {DIM} vectors (halfvec, m 16, ef_construction 64), searches meanwhile ==")
    print(f"first load (bulk path, index built after): {load_s:.1f} s")
    for method, title in (("old", "old: DROP + CREATE INDEX in one transaction"), ("new", "new: CONCURRENTLY + swap")):
        r = results[method]  # type: ignore[index]
        caught = (
            "" if r["standby_caught_up_s"] is None else f", standby replayed it {r['standby_caught_up_s']:.1f} s later"
        )
        lag = "" if r["max_replay_lag_s"] is None else f", max replay lag {r['max_replay_lag_s']:.1f} s"
        print(f"\n{title}: rebuild {r['rebuild_s']:.1f} s{caught}{lag}")
        print(f"  {'searches on':<22} {'count':>8} {'p50 ms':>8} {'p99 ms':>9} {'max ms':>9} {'errors':>7}")
        for where in ("primary", "standby"):
            if where in r:
                print(_row(f"{where}, before", r[f"{where}_before"]))
                print(_row(f"{where}, during", r[where]))
    t = results["threshold"]  # type: ignore[index]
    print(f"\n== bulk ingest at the threshold: {t['n']:,} new vectors into a model with {t['n']:,} indexed ==")
    print(f"  {t['load_into_index_s']:>7.1f} s  load into the serving index (imagedb)")
    print(
        f"  {t['load_then_concurrent_rebuild_s']:>7.1f} s  the same load, then a concurrent rebuild"
        f" ({t['concurrent_rebuild_after_s']:.1f} s)"
    )
    print(f"  {t['old_drop_load_build_s']:>7.1f} s  old: drop the index, load, build (no index meanwhile)")
    write_results("rebuild.json", results)


if __name__ == "__main__":
    main()
