"""What the report reads from the DuckDB database: raw yields, metrology, the drop log.

Always read-only, through the `marts` views and the `meta` / `quarantine` tables of `sql/`.
A report must build for any run, also without its database or from a database of an older
schema, so every reader returns either its data or an `Unavailable` that says why in words
the report prints ("not available: ..."); none of them raises for a missing table or file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from flows.report.charts import MetrologyYield, ToolYield

WAFER_OPERATION = "marts.wafer_operation"
WAFER_PARAM = "marts.wafer_param"
DROP_LOG = "meta.drop_log"
QUARANTINE_PROBLEMS = "quarantine.problems"
QUARANTINE_ROWS = "quarantine.rows"
QUARANTINE_FILES = "quarantine.files"
WAFER_FRAME = "marts.wafer_frame"
STEP_HISTORY = "core.step_history"
GX_RESULTS = "meta.gx_results"  # one row per attempt x suite x expectation (older dbs: none)

MAX_PARAMS_PER_LAYER = 4  # metrology panels per layer: the ones the model used come first


@dataclass(frozen=True)
class Unavailable:
    """A section the report cannot show, and why (printed as 'not available: <why>')."""

    why: str


@dataclass
class DropRecord:
    """One ingestion attempt of the drop log, with what its quarantine holds."""

    drop_id: str
    drop_path: str
    status: str
    started_at: str
    files: int
    rows: int
    problems: list[dict[str, Any]] = field(default_factory=list)  # rule, file, rows, message
    quarantined_rows: int = 0
    quarantined_files: int = 0


@dataclass
class FailedExpectation:
    """One expectation GX found broken in one suite run."""

    expectation: str  # "expect_column_values_to_be_between(slot)"
    rule: str | None
    unexpected_count: int | None
    unexpected_percent: float | None
    examples: list[Any]
    exception: str | None = None


@dataclass
class GxSuiteRun:
    """One suite (one table) run by Great Expectations on one ingestion attempt."""

    attempt_id: int
    drop_id: str
    status: str | None  # of the attempt, from the drop log
    suite: str
    evaluated: int
    passed: int
    rows_checked: int
    rows_total: int
    failed: list[FailedExpectation] = field(default_factory=list)

    @property
    def sampled(self) -> bool:
        return self.rows_checked < self.rows_total


class ReportDatabase:
    """A read-only view of the run's database; `open` returns `Unavailable` when it cannot."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path) -> None:
        self.con = con
        self.path = path
        rows = con.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables"
        ).fetchall()
        self.objects = {r[0] for r in rows}

    @classmethod
    @contextmanager
    def open(cls, path: str | Path | None) -> Iterator[ReportDatabase | Unavailable]:
        if path is None:
            yield Unavailable("no database was given for this report (yieldrank report --db FILE)")
            return
        path = Path(path)
        if not path.exists():
            yield Unavailable(f"the database {path} does not exist")
            return
        try:
            con = duckdb.connect(str(path), read_only=True)
        except duckdb.Error as exc:
            yield Unavailable(f"the database {path} could not be opened read-only: {exc}")
            return
        try:
            yield cls(con, path)
        finally:
            con.close()

    def missing(self, *objects: str) -> Unavailable | None:
        absent = [o for o in objects if o not in self.objects]
        if absent:
            return Unavailable(f"{', '.join(absent)} not in the database {self.path.name}")
        return None

    # ---- raw data behind the per-layer charts -------------------------------------------

    def tool_yields(self, layer: str) -> list[ToolYield] | Unavailable:
        """The layer's wafer yields by operation and tool (ordered by operation, tool)."""
        by_layer = self._tool_yields_by_layer
        if isinstance(by_layer, Unavailable):
            return by_layer
        return by_layer.get(layer) or Unavailable(
            f"no wafer with a sort result went through layer {layer}"
        )

    def metrology_yields(
        self, layer: str, preferred: list[str] | None = None
    ) -> list[MetrologyYield] | Unavailable:
        """Wafer mean and yield of the layer's parameters: `preferred` first, at most
        MAX_PARAMS_PER_LAYER of them."""
        by_layer = self._metrology_yields_by_layer
        if isinstance(by_layer, Unavailable):
            return by_layer
        series = by_layer.get(layer)
        if not series:
            return Unavailable(f"no inline metrology with a sort result in layer {layer}")
        params = sorted(series)
        preferred = [p for p in (preferred or []) if p in series]
        chosen = (preferred + [p for p in params if p not in preferred])[:MAX_PARAMS_PER_LAYER]
        return [series[p] for p in chosen]

    # Each view is read once for every layer: computing it is the cost (wafer_operation ranks
    # every step of every wafer, wafer_param averages every site), and a read per layer repeated
    # it for each of them (a year of 12 layers: 13 s and 18 s a read under load, 6 minutes of
    # the report). The values come back as one list per group, in wafer order.

    @cached_property
    def _tool_yields_by_layer(self) -> dict[str, list[ToolYield]] | Unavailable:
        if gone := self.missing(WAFER_OPERATION):
            return gone
        try:
            table = self.con.sql(
                f"""SELECT layer, operation, tool_id, list(yield ORDER BY wafer_id) AS yields
                    FROM {WAFER_OPERATION} WHERE yield IS NOT NULL
                    GROUP BY ALL ORDER BY layer, operation, tool_id"""
            ).to_arrow_table()
        except duckdb.Error as exc:
            return Unavailable(f"reading {WAFER_OPERATION} failed: {exc}")
        out: dict[str, list[ToolYield]] = {}
        yields = _list_arrays(table, "yields")
        for layer, operation, tool_id, values in zip(
            table.column("layer").to_pylist(),
            table.column("operation").to_pylist(),
            table.column("tool_id").to_pylist(),
            yields,
            strict=True,
        ):
            out.setdefault(layer, []).append(ToolYield(str(operation), str(tool_id), values))
        return out

    @cached_property
    def _metrology_yields_by_layer(self) -> dict[str, dict[str, MetrologyYield]] | Unavailable:
        if gone := self.missing(WAFER_PARAM):
            return gone
        try:
            table = self.con.sql(
                f"""SELECT layer, param,
                        list(value_mean ORDER BY wafer_id, operation) AS value_mean,
                        list(yield ORDER BY wafer_id, operation) AS yield
                    FROM {WAFER_PARAM}
                    WHERE yield IS NOT NULL AND value_mean IS NOT NULL AND layer IS NOT NULL
                    GROUP BY layer, param ORDER BY layer, param"""
            ).to_arrow_table()
        except duckdb.Error as exc:
            return Unavailable(f"reading {WAFER_PARAM} failed: {exc}")
        out: dict[str, dict[str, MetrologyYield]] = {}
        for layer, param, values, yields in zip(
            table.column("layer").to_pylist(),
            table.column("param").to_pylist(),
            _list_arrays(table, "value_mean"),
            _list_arrays(table, "yield"),
            strict=True,
        ):
            out.setdefault(layer, {})[str(param)] = MetrologyYield(str(param), values, yields)
        return out

    # ---- data quality ---------------------------------------------------------------------

    def drops(self) -> list[DropRecord] | Unavailable:
        if gone := self.missing(DROP_LOG):
            return gone
        try:
            log = self.con.execute(
                f"""SELECT attempt_id, drop_id, drop_path, status, files, row_counts,
                           strftime(started_at, '%Y-%m-%d %H:%M') AS started, problems
                    FROM {DROP_LOG} ORDER BY started_at, attempt_id"""
            ).fetchall()
        except duckdb.Error as exc:
            return Unavailable(f"reading {DROP_LOG} failed: {exc}")
        problems = self._by_attempt(
            QUARANTINE_PROBLEMS,
            "attempt_id, rule, severity, table_name, source_file, n_rows, message",
        )
        rows = self._counts(QUARANTINE_ROWS)
        files = self._counts(QUARANTINE_FILES)
        records = []
        for attempt_id, drop_id, path, status, files_json, counts_json, started, logged in log:
            records.append(
                DropRecord(
                    drop_id=drop_id,
                    drop_path=path,
                    status=status,
                    started_at=started,
                    files=_json_len(files_json),
                    rows=_json_total(counts_json),
                    # quarantine.problems holds a rejected drop's; the log also a merged one's
                    problems=problems.get(attempt_id) or _logged_problems(logged),
                    quarantined_rows=rows.get(attempt_id, 0),
                    quarantined_files=files.get(attempt_id, 0),
                )
            )
        return records

    def _by_attempt(self, table: str, columns: str) -> dict[int, list[dict[str, Any]]]:
        if self.missing(table):
            return {}
        cur = self.con.execute(f"SELECT {columns} FROM {table} ORDER BY attempt_id, rule")
        names = [d[0] for d in cur.description]
        out: dict[int, list[dict[str, Any]]] = {}
        for row in cur.fetchall():
            record = dict(zip(names, row, strict=True))
            out.setdefault(record.pop("attempt_id"), []).append(record)
        return out

    def _counts(self, table: str) -> dict[int, int]:
        if self.missing(table):
            return {}
        return dict(
            self.con.execute(f"SELECT attempt_id, count(*) FROM {table} GROUP BY 1").fetchall()
        )

    def data_facts(self) -> list[tuple[str, str]]:
        """Lots, wafers and dates in the database now (it may hold more than the run saw)."""
        facts: list[tuple[str, str]] = []
        if not self.missing(WAFER_FRAME):
            lots, wafers, with_yield = self.con.execute(
                f"SELECT count(DISTINCT lot_id), count(*), count(yield) FROM {WAFER_FRAME}"
            ).fetchone()
            facts += [
                ("lots (in the database)", f"{lots:,}"),
                ("wafers (in the database)", f"{wafers:,}"),
                ("wafers with a sort result (in the database)", f"{with_yield:,}"),
            ]
        if not self.missing(STEP_HISTORY):
            first, last = self.con.execute(
                f"SELECT min(track_in_ts)::DATE, max(track_out_ts)::DATE FROM {STEP_HISTORY}"
            ).fetchone()
            if first is not None:
                facts.append(("date range (in the database)", f"{first} to {last}"))
        return facts

    def gx_results(self) -> list[GxSuiteRun] | Unavailable:
        """What Great Expectations found, per attempt and suite, in drop-log order."""
        if gone := self.missing(GX_RESULTS):
            return Unavailable(f"the database keeps none ({gone.why})")
        status = "NULL"
        join = ""
        if not self.missing(DROP_LOG):
            status, join = "d.status", f"LEFT JOIN {DROP_LOG} AS d USING (attempt_id)"
        try:
            rows = self.con.execute(
                f"""SELECT g.attempt_id, g.drop_id, {status}, g.suite, g.expectation_type,
                           g.column_names, g.rule, g.success, g.unexpected_count,
                           g.unexpected_percent, g.partial_unexpected, g.exception_message,
                           g.rows_checked, g.rows_total
                    FROM {GX_RESULTS} AS g {join}
                    ORDER BY g.attempt_id, g.suite, g.expectation_index"""
            ).fetchall()
        except duckdb.Error as exc:
            return Unavailable(f"reading {GX_RESULTS} failed: {exc}")
        runs: dict[tuple[int, str], GxSuiteRun] = {}
        for (
            attempt_id, drop_id, drop_status, suite, kind, columns, rule, success,
            unexpected, percent, examples, exception, checked, total,
        ) in rows:  # fmt: skip
            run = runs.setdefault(
                (attempt_id, suite),
                GxSuiteRun(attempt_id, drop_id, drop_status, suite, 0, 0, checked, total),
            )
            run.evaluated += 1
            if success:
                run.passed += 1
                continue
            names = json.loads(columns) if isinstance(columns, str) else columns
            run.failed.append(
                FailedExpectation(
                    f"{kind}({', '.join(map(str, names or []))})",
                    rule,
                    unexpected,
                    percent,
                    json.loads(examples) if isinstance(examples, str) else list(examples or []),
                    exception,
                )
            )
        return list(runs.values())


def _logged_problems(value: Any) -> list[dict[str, Any]]:
    """The drop log's problems (flows.warehouse.contract.Problem.to_dict) under quarantine's names."""
    parsed = json.loads(value) if isinstance(value, str) else value
    if not isinstance(parsed, list):
        return []
    return [
        {
            "rule": p.get("rule"),
            "severity": p.get("severity"),
            "table_name": p.get("table"),
            "source_file": p.get("file"),
            "n_rows": p.get("count"),
            "message": p.get("message"),
        }
        for p in parsed
        if isinstance(p, dict)
    ]


def _json_len(value: Any) -> int:
    parsed = json.loads(value) if isinstance(value, str) else value
    return len(parsed) if isinstance(parsed, list | dict) else 0


def _json_total(value: Any) -> int:
    """Rows of a drop: `row_counts` is {table: rows} (or a list of counts)."""
    parsed = json.loads(value) if isinstance(value, str) else value
    if isinstance(parsed, dict):
        parsed = list(parsed.values())
    if isinstance(parsed, list):
        return int(sum(v for v in parsed if isinstance(v, int | float)))
    return 0


def _list_arrays(table: pa.Table, column: str) -> list[np.ndarray]:
    """Each row's list of numbers as a float array, without a Python object per number."""
    lists = table.column(column).combine_chunks()
    if len(lists) == 0:
        return []
    offsets = lists.offsets.to_numpy()
    values = lists.flatten().to_numpy(zero_copy_only=False).astype(float)
    return np.split(values, offsets[1:-1] - offsets[0])
