"""The data contract: the `expectations/` suites read as table contracts, and what checking a
drop against them reports (`Problem`, the GX results, `ValidationResult`).

How a drop is checked is in `flows.warehouse.drop_checks` (SQL rules over every row, then the
Great Expectations suites); this module only holds the contract and the result types.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from flows.resources import expectations_dir

EXPECTATIONS_DIR = expectations_dir()
# in landing and checking order: a table comes after the tables its rules refer to
TABLES = (
    "lots", "wafers", "step_history", "inline_meas", "sort_yield", "sort_die",
    "equipment_events", "bin_defs",
)  # fmt: skip
SQL_TYPES = {
    "str": "VARCHAR", "int": "BIGINT", "float": "DOUBLE", "ts": "TIMESTAMP", "bool": "BOOLEAN",
}  # fmt: skip
N_EXAMPLES = 5
GX_CHUNK_ROWS = 250_000
GX_MAX_ROWS = 100_000  # rows of a table GX sees by default (the SQL rules see all of them)
GX_FLAGGED_ROWS = 10_000  # rows the SQL rules flagged, shown to GX beside the sample
# expectations on the whole drop: reported from the SQL rule, not run by GX on chunks
WHOLE_DROP_EXPECTATIONS = frozenset(
    {"expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique"}
)
GX_PARTIAL_EXAMPLES = 20  # unexpected values kept per expectation (GX's own default)

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    type: str  # contract type: str | int | float | ts | bool
    required: bool

    @property
    def sql_type(self) -> str:
        return SQL_TYPES[self.type]


@dataclass(frozen=True)
class TableContract:
    """One contract table as its expectation suite states it."""

    table: str
    columns: tuple[ColumnSpec, ...]
    key: tuple[str, ...]
    expectations: tuple[dict[str, Any], ...]
    suite: dict[str, Any]

    def column(self, name: str) -> ColumnSpec:
        return next(c for c in self.columns if c.name == name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


@dataclass
class Problem:
    """One broken rule, in plain words: which table and file, which rule, how many rows."""

    rule: str
    message: str
    table: str | None = None
    file: str | None = None
    count: int | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)
    severity: Severity = "error"

    def __str__(self) -> str:
        text = f"{self.file or self.table or 'drop'}: [{self.rule}] {self.message}"
        if self.examples:
            shown = "; ".join(json.dumps(e, default=str) for e in self.examples[:3])
            text += f" e.g. {shown}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "message": self.message,
            "table": self.table,
            "file": self.file,
            "count": self.count,
            "examples": self.examples,
            "severity": self.severity,
        }


@dataclass
class GxExpectationResult:
    """One expectation of a suite, its GX results summed over the chunks GX was fed.

    Counts are None for expectations on the table's shape (a column exists, its dtype),
    which GX answers with an observed value rather than rows. A uniqueness expectation is
    answered by the SQL rule over the whole drop instead (`evaluated_by == "sql"`,
    `rows_checked` = every row of the table).
    """

    index: int  # position in the suite
    type: str
    columns: list[str]
    rule: str | None  # the suite's name for it, as the SQL rules and quarantine use it
    success: bool = True
    element_count: int | None = None
    missing_count: int | None = None
    unexpected_count: int | None = None
    partial_unexpected: list[Any] = field(default_factory=list)
    exception: str | None = None
    evaluated_by: Literal["gx", "sql"] = "gx"
    rows_checked: int | None = None  # None: the rows GX saw of the table (the report's)

    @property
    def unexpected_percent(self) -> float | None:
        """Of the non-missing values GX saw, as GX states it for a single batch."""
        if self.unexpected_count is None or not self.element_count:
            return None
        checked = self.element_count - (self.missing_count or 0)
        return 100.0 * self.unexpected_count / checked if checked else None

    def add(self, chunk: Any) -> None:
        """Fold in the result of this expectation on one more chunk."""
        self.success &= bool(chunk.success)
        info = chunk.exception_info or {}
        if info.get("raised_exception") and self.exception is None:
            self.exception = str(info.get("exception_message") or "raised an exception")[:500]
        res = chunk.result or {}
        for name in ("element_count", "missing_count", "unexpected_count"):
            if res.get(name) is not None:
                setattr(self, name, (getattr(self, name) or 0) + int(res[name]))
        room = GX_PARTIAL_EXAMPLES - len(self.partial_unexpected)
        self.partial_unexpected += list(res.get("partial_unexpected_list") or [])[:room]


@dataclass
class GxTableReport:
    """What Great Expectations said about one table (over the rows it was shown)."""

    table: str
    success: bool
    rows_checked: int  # rows GX was shown: all, or the sample of `gx_sample_sql`
    rows_total: int  # rows of the table in the drop
    chunks: int
    expectations: list[GxExpectationResult]
    sample: str = "all rows"  # how the rows GX saw were chosen, in words

    @property
    def failed(self) -> dict[str, int]:
        """ "expectation_type(first column)" -> unexpected rows, for the failed expectations."""
        return {
            f"{e.type}({e.columns[0] if e.columns else ''})": e.unexpected_count or 0
            for e in self.expectations
            if not e.success
        }


@dataclass
class ValidationResult:
    problems: list[Problem]
    gx: list[GxTableReport] = field(default_factory=list)
    docs_dir: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds: sql_rules, gx

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors


@cache
def load_contract(expectations_dir: Path = EXPECTATIONS_DIR) -> dict[str, TableContract]:
    """Read the suites in `expectations_dir` (plain JSON; no GX import needed)."""
    contract: dict[str, TableContract] = {}
    for table in TABLES:
        path = expectations_dir / f"{table}.json"
        suite = json.loads(path.read_text(encoding="utf-8"))
        spec = suite["meta"]["contract"]
        contract[table] = TableContract(
            table=table,
            columns=tuple(ColumnSpec(c["name"], c["type"], c["required"]) for c in spec["columns"]),
            key=tuple(spec["key"]),
            expectations=tuple(suite["expectations"]),
            suite=suite,
        )
    return contract
