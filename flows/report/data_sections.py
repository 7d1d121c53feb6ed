"""The report's sections about the data and the method: what was delivered, what the checks
found (drops, problems, Great Expectations runs), how the analysis was run and with what.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from flows.report.data import DropRecord, GxSuiteRun, Unavailable
from flows.report.model import Table, fmt_num, records_table

DATA_COUNTS = (  # data_summary key(s) -> label
    (("n_lots", "lots"), "lots"),
    (("n_wafers", "wafers"), "wafers"),
    (("n_wafers_with_yield",), "wafers with a sort result"),
    (("layers", "n_layers"), "layers"),
)


def data_facts(
    summary: dict[str, Any], from_db: Sequence[tuple[str, str]] = ()
) -> list[tuple[str, str]]:
    """The run's data as the run recorded it; what it did not record, from the database."""
    facts: list[tuple[str, str]] = []
    drops = summary.get("drops")
    if isinstance(drops, list) and drops:
        names = [
            str(d.get("drop_id", d.get("name", d))) if isinstance(d, dict) else str(d)
            for d in drops
        ]
        facts.append(("drops", f"{len(names)}: " + ", ".join(names)))
    elif drops and not isinstance(drops, list):
        facts.append(("drops", fmt_num(drops)))
    first, last = _date_range(summary)
    if first or last:
        facts.append(("date range", f"{first or '?'} to {last or '?'}"))
    used = {"drops", "date_range", "date_from", "date_to", "data_quality"}
    for keys, label in DATA_COUNTS:
        key = next((k for k in keys if k in summary), None)
        if key is not None:
            facts.append((label, fmt_num(summary[key])))
        used.update(keys)
    have = {label for label, _ in facts}
    facts += [(label, value) for label, value in from_db if label.split(" (")[0] not in have]
    for key, value in summary.items():
        if key not in used and not isinstance(value, dict | list):
            facts.append((key.replace("_", " "), fmt_num(value)))
    return facts or [("data", "the run recorded no summary of its data")]


def _date_range(summary: dict[str, Any]) -> tuple[str | None, str | None]:
    rng = summary.get("date_range")
    if isinstance(rng, list | tuple) and len(rng) == 2:
        return _day(rng[0]), _day(rng[1])
    if isinstance(rng, dict):
        return _day(rng.get("start") or rng.get("first")), _day(rng.get("end") or rng.get("last"))
    return _day(summary.get("date_from")), _day(summary.get("date_to"))


def _day(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text[:10] if re.match(r"\d{4}-\d{2}-\d{2}", text) else text


def quality_outcome(
    outcome: Any,
    drops: list[DropRecord] | Unavailable,
    gx_runs: list[GxSuiteRun] | Unavailable | None = None,
) -> str:
    parts = [str(outcome)] if outcome else []
    if isinstance(drops, list) and drops:
        counts: dict[str, int] = {}
        for d in drops:
            counts[d.status] = counts.get(d.status, 0) + 1
        attempts = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in counts.items())
        quarantined = sum(d.quarantined_rows for d in drops)
        plural = "s" if len(drops) != 1 else ""
        parts.append(
            f"{len(drops)} ingestion attempt{plural} in the database: {attempts}; "
            f"{quarantined:,} rows in quarantine"
        )
    if isinstance(gx_runs, list) and gx_runs:
        evaluated = sum(r.evaluated for r in gx_runs)
        failed = sum(len(r.failed) for r in gx_runs)
        if failed:
            broken = sum(1 for r in gx_runs if r.failed)
            parts.append(
                f"Great Expectations: {failed:,} of {evaluated:,} expectations failed, "
                f"in {broken} of {len(gx_runs)} suite runs"
            )
        else:
            parts.append(
                f"Great Expectations: all {evaluated:,} expectations passed "
                f"in {len(gx_runs)} suite runs"
            )
    return "; ".join(parts) if parts else "not recorded for this run"


def drops_table(drops: list[DropRecord] | Unavailable) -> Table | Unavailable:
    if isinstance(drops, Unavailable):
        return drops
    if not drops:
        return Unavailable("the drop log is empty")
    rows, flagged = [], set()
    for i, d in enumerate(drops):
        broken = sorted({str(p.get("rule")) for p in d.problems})
        rows.append(
            [
                d.drop_id,
                d.drop_path,
                d.status,
                d.started_at,
                fmt_num(d.files),
                fmt_num(d.rows),
                fmt_num(d.quarantined_rows),
                fmt_num(d.quarantined_files),
                ", ".join(broken) or "–",
            ]
        )
        if d.status == "rejected" or any(p.get("severity") == "error" for p in d.problems):
            flagged.add(i)
    return Table(
        [
            "drop",
            "path",
            "status",
            "ingested",
            "files",
            "rows",
            "quarantined rows",
            "quarantined files",
            "rules broken",
        ],
        rows,
        numeric={4, 5, 6, 7},
        flagged=flagged,
    )


def problems_table(drops: list[DropRecord] | Unavailable) -> Table | None:
    if isinstance(drops, Unavailable):
        return None
    rows = [
        [
            d.drop_id,
            str(p.get("table_name") or "–"),
            str(p.get("source_file") or "–"),
            str(p.get("rule")),
            str(p.get("severity") or "–"),
            fmt_num(p.get("n_rows")),
            str(p.get("message") or ""),
        ]
        for d in drops
        for p in d.problems
    ]
    if not rows:
        return None
    return Table(
        ["drop", "table", "file", "rule", "severity", "rows", "message"], rows, numeric={5}
    )


def expectations_table(
    expectations: Any, from_db: list[GxSuiteRun] | Unavailable
) -> Table | Unavailable:
    """Per drop and suite, what GX found: from meta.gx_results, else as the run recorded it."""
    if isinstance(from_db, list) and from_db:
        return _gx_runs_table(from_db)
    if not expectations:
        expectations = from_db
    if isinstance(expectations, Unavailable):
        return Unavailable(
            f"the run recorded no Great Expectations results, and {expectations.why}"
        )
    if not expectations:
        return Unavailable("the run recorded no Great Expectations results")
    if isinstance(expectations, dict):
        expectations = [
            {"suite": k, **v} if isinstance(v, dict) else {"suite": k, "result": v}
            for k, v in expectations.items()
        ]
    table = records_table(list(expectations), empty="no Great Expectations results")
    if isinstance(table, Table) and "success" in table.header:
        col = table.header.index("success")
        table.flagged = {i for i, row in enumerate(table.rows) if row[col] == "no"}
    return table


def _gx_runs_table(runs: list[GxSuiteRun]) -> Table:
    rows = [
        [
            r.drop_id,
            r.status or "–",
            r.suite,
            fmt_num(r.evaluated),
            fmt_num(r.passed),
            fmt_num(len(r.failed)),
            _rows_checked(r),
        ]
        for r in runs
    ]
    sampled = [r for r in runs if r.sampled]
    note = None
    if sampled:
        note = (
            f"Great Expectations checked a sample in {len(sampled)} of {len(runs)} suite runs: "
            "an evenly spaced sample spread over every file plus the rows the SQL rules flagged "
            "(rows checked < rows delivered); uniqueness is answered by the SQL rule over every "
            "row. The contract's SQL rules, which decide whether a drop merges, checked every row."
        )
    return Table(
        ["drop", "status", "suite", "expectations", "passed", "failed", "rows checked"],
        rows,
        numeric={3, 4, 5},
        flagged={i for i, r in enumerate(runs) if r.failed},
        note=note,
    )


def _rows_checked(run: GxSuiteRun) -> str:
    if run.sampled:
        return f"{run.rows_checked:,} of {run.rows_total:,} (sample)"
    return f"all {run.rows_total:,}"


def failed_expectations_table(runs: list[GxSuiteRun] | Unavailable | None) -> Table | None:
    """Every expectation GX found broken, with how many rows and a few offending values."""
    if not isinstance(runs, list):
        return None
    rows = [
        [
            r.drop_id,
            r.suite,
            f.expectation,
            f.rule or "–",
            fmt_num(f.unexpected_count),
            fmt_num(f.unexpected_percent),
            _examples(f.examples) if f.examples or not f.exception else f.exception,
            _rows_checked(r),
        ]
        for r in runs
        for f in r.failed
    ]
    if not rows:
        return None
    return Table(
        [
            "drop",
            "suite",
            "expectation",
            "rule",
            "unexpected rows",
            "unexpected %",
            "example values",
            "rows checked",
        ],
        rows,
        numeric={4, 5},
        flagged=set(range(len(rows))),
    )


def _examples(values: list[Any], shown: int = 5) -> str:
    if not values:
        return "–"
    text = ", ".join(fmt_num(v) if not isinstance(v, list) else str(v) for v in values[:shown])
    return text + (", …" if len(values) > shown else "")


def data_docs_link(path: Any, out_dir: Path) -> str | None:
    """A link to the GX data docs, relative to the report when they sit beside it.

    The run may name them (data_quality.data_docs); otherwise the shallowest index.html in a
    folder of the run named like "data-docs" is taken (where flows.orchestration.prefect_flows puts them).
    """
    candidates = [Path(path)] if path else []
    candidates += sorted(out_dir.glob("*docs*/**/index.html"), key=lambda p: len(p.parts))[:1]
    for candidate in candidates:
        full = candidate if candidate.is_absolute() else out_dir / candidate
        if full.is_file():
            try:
                return full.resolve().relative_to(out_dir.resolve()).as_posix()
            except ValueError:
                return full.resolve().as_uri()
    return None


def impact_definition(method: dict[str, Any]) -> str:
    recorded = method.get("impact_definition")
    if recorded:
        return str(recorded)
    try:  # the definition lives with the ranking; the report only quotes it
        from flows.analysis.ranking import YIELD_IMPACT_DEFINITION
    except ImportError:
        return "not recorded by the analysis run"
    return (
        f"(not recorded by the analysis run; as defined by yieldrank {package_version('yieldrank')}, "
        f"which built this report) {YIELD_IMPACT_DEFINITION}"
    )


def method_facts(method: dict[str, Any]) -> list[tuple[str, str]]:
    facts = []
    for key, value in method.items():
        if key in ("impact_definition", "versions"):
            continue
        if isinstance(value, dict):
            value = "; ".join(f"{k}: {fmt_num(v)}" for k, v in value.items())
        elif isinstance(value, list):
            value = "; ".join(fmt_num(v) for v in value)
        facts.append((key.replace("_", " "), fmt_num(value)))
    return facts or [("method", "the run recorded no description of its method")]


def versions_table(method: dict[str, Any]) -> Table:
    """Package versions of the analysis run beside those that built this report."""
    analysis = {str(k): str(v) for k, v in (method.get("versions") or {}).items()}
    packages = list(analysis)
    packages += [p for p in REPORT_PACKAGES if p not in packages]
    rows = [
        [p, analysis.get(p, "–"), package_version(p) if p in REPORT_PACKAGES else "–"]
        for p in packages
    ]
    return Table(["package", "analysis run", "this report"], rows)


REPORT_PACKAGES = ("yieldrank", "numpy", "scipy", "duckdb", "polars", "matplotlib", "jinja2")


@cache
def package_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"
