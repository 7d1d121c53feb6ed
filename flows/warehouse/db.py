"""The one way into the DuckDB database: open a connection with the schema of `sql/` applied.

The schema lives in plain `.sql` files, one object each, applied in layer order:

    schemas -> core -> meta -> quarantine -> analysis -> marts    (persistent, in the file)
    landing -> staging                                            (temporary, per connection)

Landing and staging are temporary because a drop only passes through them inside one
ingest: it is either merged into `core` or kept in `quarantine`, never left half-way.

Anything that comes from a delivered file and ends up in SQL text (column names) goes through
`quote_ident` / `quote_literal`; data values always travel as bound parameters.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb

from flows.resources import sql_dir

SQL_DIR = sql_dir()
PERSISTENT_LAYERS = ("schemas", "core", "meta", "quarantine", "analysis", "marts")
TEMPORARY_LAYERS = ("landing", "staging")


def sql_files(layers: tuple[str, ...], sql_dir: Path = SQL_DIR) -> list[Path]:
    """The `.sql` files of the given layers, in the order they must be applied."""
    files: list[Path] = []
    for layer in layers:
        files.extend(sorted((sql_dir / layer).glob("*.sql")))
    return files


def schema_fingerprint(sql_dir: Path = SQL_DIR) -> str:
    """A hash of the persistent schema files: when it changes, the schema is re-applied."""
    digest = hashlib.sha256()
    for path in sql_files(PERSISTENT_LAYERS, sql_dir):
        digest.update(path.relative_to(sql_dir).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def apply_schema(con: duckdb.DuckDBPyConnection, *, temporary: bool = True) -> None:
    """Create what is missing of `sql/` (persistent layers only when their files changed).

    Tables use CREATE ... IF NOT EXISTS, views CREATE OR REPLACE, so re-applying is safe; the
    fingerprint in meta.schema_version just spares every connection the work.
    """
    fingerprint = schema_fingerprint()
    layers = TEMPORARY_LAYERS if temporary else ()
    if _stored_fingerprint(con) != fingerprint:
        layers = PERSISTENT_LAYERS + layers
    for path in sql_files(layers):
        try:
            con.execute(path.read_text(encoding="utf-8"))
        except duckdb.Error as exc:
            raise RuntimeError(f"schema file {path.relative_to(SQL_DIR)} failed: {exc}") from exc
    if layers[: len(PERSISTENT_LAYERS)] == PERSISTENT_LAYERS:
        con.execute(
            "CREATE OR REPLACE TABLE meta.schema_version AS SELECT ? AS fingerprint", [fingerprint]
        )


def _stored_fingerprint(con: duckdb.DuckDBPyConnection) -> str | None:
    (exists,) = con.execute(
        "SELECT count(*) FROM duckdb_tables() "
        "WHERE schema_name = 'meta' AND table_name = 'schema_version' AND NOT temporary"
    ).fetchall()[0]
    if not exists:
        return None
    rows = con.execute("SELECT fingerprint FROM meta.schema_version").fetchall()
    return rows[0][0] if rows else None


def connect(path: str | Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the database at `path` (created if missing) with the schema applied.

    Timestamps are handled in UTC. A read-only connection does not touch the schema: it
    expects a database that a read-write connection has created. Close the connection when
    done (or use it as a context manager); DuckDB allows one writing process per file.
    """
    path = Path(path)
    if read_only and not path.exists():
        raise FileNotFoundError(f"no database at {path}: ingest a drop first")
    con = duckdb.connect(str(path), read_only=read_only)
    try:
        con.execute("SET TimeZone = 'UTC'")
        if not read_only:
            con.execute("BEGIN TRANSACTION")
            apply_schema(con)
            con.execute("COMMIT")
    except BaseException:
        con.close()
        raise
    return con


def quote_ident(name: str) -> str:
    """`name` as a SQL identifier, whatever characters it holds (quotes are doubled)."""
    if "\x00" in name:
        raise ValueError(f"identifier {name!r} contains a NUL byte")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """`text` as a SQL string literal (for identifiers used as keys, never for data values)."""
    if "\x00" in text:
        raise ValueError(f"text {text!r} contains a NUL byte")
    return "'" + text.replace("'", "''") + "'"
