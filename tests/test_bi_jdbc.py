"""A new BI user's first hour, as docs/bi.md tells it: `imagedb db listen`, `imagedb grant-reader`, then the JDBC URL
the page gives, from a small program that asks what Metabase's sync asks (tables, columns with their remarks, a
SELECT ... LIMIT on each table listed) and what DBeaver's navigator asks (schemas, tables, columns, functions,
primary and imported keys). Everything listed must be readable. Needs a JDK and the PostgreSQL JDBC driver (see
tests/test_sql_readers.py's _jdbc_driver); skipped in one line without them."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_sql_readers import _jdbc_driver

from imagedb.cli import main
from imagedb.pg.database import open_connection
from imagedb.pg.embedded import stop_embedded
from imagedb.store import Store

from helpers import fill_synthetic

BI_DOC = Path(__file__).resolve().parents[1] / "docs" / "bi.md"
PASSWORD = "bi-tool-login-pw"
VIEWS = ["collection_stats", "dicom_catalog", "duplicate_report", "image_catalog"]
SEARCHES = ["imagedb_nearest", "imagedb_search_hybrid", "imagedb_search_text", "imagedb_similar"]

# Prints one fact a line: "schema S", "table S.T TYPE REMARKS?", "columns S.T N REMARKED", "select S.T ok|refused",
# "keys S.T", "function S.F REMARKS?".
_JAVA = """
import java.sql.*;
import java.util.*;

public class Sync {
    public static void main(String[] args) throws Exception {
        try (Connection conn = DriverManager.getConnection(args[0], args[1], args[2])) {
            DatabaseMetaData md = conn.getMetaData();
            try (ResultSet r = md.getSchemas()) { while (r.next()) System.out.println("schema " + r.getString(1)); }
            List<String[]> tables = new ArrayList<>();
            String[] types = {"TABLE", "VIEW", "MATERIALIZED VIEW", "FOREIGN TABLE", "PARTITIONED TABLE"};
            try (ResultSet r = md.getTables(null, args.length > 3 ? args[3] : null, "%", types)) {
                while (r.next()) {
                    String schema = r.getString("TABLE_SCHEM");
                    if (schema.equals("pg_catalog") || schema.equals("information_schema")) continue;
                    tables.add(new String[] {schema, r.getString("TABLE_NAME")});
                    System.out.println("table " + schema + "." + r.getString("TABLE_NAME") + " "
                        + r.getString("TABLE_TYPE").replace(' ', '_') + " " + (r.getString("REMARKS") != null));
                }
            }
            for (String[] t : tables) {
                String name = t[0] + "." + t[1];
                int columns = 0, remarked = 0;
                try (ResultSet r = md.getColumns(null, t[0], t[1], "%")) {
                    while (r.next()) { columns++; if (r.getString("REMARKS") != null) remarked++; }
                }
                System.out.println("columns " + name + " " + columns + " " + remarked);
                try (ResultSet a = md.getPrimaryKeys(null, t[0], t[1]);
                     ResultSet b = md.getImportedKeys(null, t[0], t[1])) {
                    while (a.next()) {} while (b.next()) {}
                }
                System.out.println("keys " + name);
                try (Statement st = conn.createStatement();
                     ResultSet r = st.executeQuery("SELECT * FROM \\"" + t[0] + "\\".\\"" + t[1] + "\\" LIMIT 5")) {
                    while (r.next()) {}
                    System.out.println("select " + name + " ok");
                } catch (SQLException e) {
                    System.out.println("select " + name + " refused");
                }
            }
            try (ResultSet r = md.getFunctions(null, "public", "imagedb%")) {
                while (r.next()) System.out.println("function public." + r.getString("FUNCTION_NAME") + " "
                    + (r.getString("REMARKS") != null));
            }
        }
    }
}
"""


@pytest.fixture
def bi(tmp_path: Path) -> Iterator[tuple[Path, str, int]]:
    """A compiled Sync program, the driver's jar, and the port of an embedded server listening with a reader."""
    driver = _jdbc_driver()
    if shutil.which("javac") is None or driver is None:
        pytest.skip("no JDK or no PostgreSQL JDBC driver here: the BI catalog check was not run")
    home = tmp_path / "home"
    store = Store(open_connection(home=home))
    try:
        fill_synthetic(store, 20, dim=512, name="default")
    finally:
        store.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    try:
        for args in (["db", "listen", f"127.0.0.1:{port}"], ["grant-reader", "metabase", "--password", PASSWORD]):
            result = CliRunner().invoke(main, ["--home", str(home), *args], env={"IMAGEDB_DATABASE_URL": None})
            assert result.exit_code == 0, result.output
        (tmp_path / "Sync.java").write_text(_JAVA)
        subprocess.run(["javac", "-cp", str(driver), "Sync.java"], cwd=tmp_path, check=True, timeout=120)
        yield tmp_path, str(driver), port
    finally:
        stop_embedded(home)


def _sync(bi: tuple[Path, str, int], url: str, *schema: str) -> list[str]:
    folder, driver, port = bi
    run = subprocess.run(
        ["java", "-cp", f"{driver}{os.pathsep}.", "Sync", url, "metabase", PASSWORD, *schema],
        cwd=folder, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return run.stdout.splitlines()


def _of(lines: list[str], kind: str) -> list[str]:
    return sorted(line.split(" ", 1)[1] for line in lines if line.startswith(kind + " "))


@pytest.mark.slow
def test_a_bi_tool_with_the_documented_url_lists_only_what_the_reader_can_read(bi: tuple[Path, str, int]) -> None:
    documented = re.search(r"`(jdbc:postgresql://127\.0\.0\.1:5433/imagedb\?[^`]+)`", BI_DOC.read_text())
    assert documented is not None, "docs/bi.md gives no JDBC URL for BI tools"
    url = documented.group(1).replace(":5433/", f":{bi[2]}/")
    lines = _sync(bi, url)
    assert "schema imagedb_internal" not in lines
    assert _of(lines, "table") == [f"public.{v} VIEW true" for v in VIEWS]
    for view in VIEWS:  # every column says what it holds (Metabase's field descriptions, DBeaver's comments)
        columns = next(line.split() for line in lines if line.startswith(f"columns public.{view} "))
        assert int(columns[2]) > 0 and columns[2] == columns[3], view
    assert _of(lines, "select") == [f"public.{v} ok" for v in VIEWS]
    assert _of(lines, "keys") == [f"public.{v}" for v in VIEWS]
    assert _of(lines, "function") == [f"public.{f} true" for f in SEARCHES]


@pytest.mark.slow
def test_without_the_option_the_public_schema_still_lists_only_the_views(bi: tuple[Path, str, int]) -> None:
    """A tool that keeps the driver's defaults and browses the schema it connects to (`public`) sees the views
    only; the internal schema's tables show up only when it lists every schema, and each is refused."""
    url = f"jdbc:postgresql://127.0.0.1:{bi[2]}/imagedb"
    assert _of(_sync(bi, url, "public"), "table") == [f"public.{v} VIEW true" for v in VIEWS]
    everything = _sync(bi, url)
    internal = [line for line in _of(everything, "select") if line.startswith("imagedb_internal.")]
    assert internal and all(line.endswith(" refused") for line in internal)
    assert [line for line in _of(everything, "select") if line.endswith(" refused")] == internal
