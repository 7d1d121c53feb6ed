"""Checks on the marts (the model-frame views of `sql/marts/`): keys unique, columns not null.

The rules sit beside the marts they check, in `sql/marts/checks.toml`, one table per mart; a
mart added there without its checks is an error, not a silent pass. The checks run once the
marts are built, before the analysis reads them (`flows.analysis.frames`): a mart that broke
its key (a join that fans out, a NULL layer) would otherwise bias every fit without a word.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache

import duckdb

from flows.warehouse.db import SQL_DIR, quote_ident

CHECKS_FILE = SQL_DIR / "marts" / "checks.toml"
N_EXAMPLES = 3


class MartCheckError(RuntimeError):
    """A mart broke one of its checks; the message names the mart, the rule and examples."""


@dataclass(frozen=True)
class MartCheck:
    """The checks of one mart: its key columns (unique, not null) and other not-null columns."""

    mart: str
    key: tuple[str, ...]
    not_null: tuple[str, ...] = ()


@cache
def mart_checks() -> dict[str, MartCheck]:
    """The checks declared in `sql/marts/checks.toml`, by mart name (without `marts.`).

    Returns
    -------
    dict[str, MartCheck] : one entry per mart, in the file's order
    """
    declared = tomllib.loads(CHECKS_FILE.read_text(encoding="utf-8"))
    checks = {}
    for mart, spec in declared.items():
        unknown = set(spec) - {"key", "not_null"}
        if unknown or not spec.get("key"):
            raise ValueError(
                f"{CHECKS_FILE.name} [{mart}]: needs a non-empty `key`, allows `not_null` only"
                + (f" (unknown: {sorted(unknown)})" if unknown else "")
            )
        checks[mart] = MartCheck(mart, tuple(spec["key"]), tuple(spec.get("not_null", ())))
    return checks


def mart_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The views of schema `marts` in the database."""
    rows = con.execute(
        "SELECT view_name FROM duckdb_views() WHERE schema_name = 'marts' ORDER BY view_name"
    ).fetchall()
    return [name for (name,) in rows]


def check_marts(con: duckdb.DuckDBPyConnection, marts: tuple[str, ...] | None = None) -> None:
    """Check the marts on `con` against `sql/marts/checks.toml`; raise on the first broken one.

    Parameters
    ----------
    con : a connection to the database (read-only is enough)
    marts : the marts to check (names without `marts.`); default every mart of the database

    Raises
    ------
    MartCheckError : a mart has no declared checks, a repeated key, or a NULL where not allowed;
        the message names the mart, the rule, the count and example keys.
    """
    checks = mart_checks()
    for mart in marts if marts is not None else tuple(mart_names(con)):
        if mart not in checks:
            raise MartCheckError(
                f"marts.{mart} has no checks: declare its key in sql/marts/checks.toml"
            )
        _check_one(con, checks[mart])


def _check_one(con: duckdb.DuckDBPyConnection, check: MartCheck) -> None:
    view = f"marts.{quote_ident(check.mart)}"
    key = ", ".join(quote_ident(c) for c in check.key)
    columns = (*check.key, *check.not_null)
    counts = ", ".join(f"count(*) FILTER (WHERE {quote_ident(c)} IS NULL)" for c in columns)
    nulls = con.execute(f"SELECT {counts} FROM {view}").fetchall()[0]
    for column, n in zip(columns, nulls, strict=True):
        if n:
            rule = "key column" if column in check.key else "not-null column"
            raise MartCheckError(f"marts.{check.mart}: {rule} {column} is NULL in {n:,} rows")
    repeated = con.execute(
        f"""SELECT count(*) OVER (), {key}, n FROM (
                SELECT {key}, count(*) AS n FROM {view} GROUP BY ALL HAVING count(*) > 1
            ) ORDER BY ALL LIMIT {N_EXAMPLES}"""
    ).fetchall()
    if repeated:
        examples = "; ".join(
            ", ".join(f"{c}={v!r}" for c, v in zip(check.key, row[1:-1], strict=True))
            + f" ({row[-1]} rows)"
            for row in repeated
        )
        raise MartCheckError(
            f"marts.{check.mart}: key ({', '.join(check.key)}) is not unique: "
            f"{repeated[0][0]:,} keys repeated, e.g. {examples}"
        )
