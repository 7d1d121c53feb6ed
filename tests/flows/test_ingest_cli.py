"""`yieldrank ingest` and `yieldrank status` (the simulate command is tested in test_cli.py)."""

from __future__ import annotations

from typer.testing import CliRunner

from flows.cli import app
from tests.flows.conftest import query
from tests.flows.drops import fab_tables, write_drop

runner = CliRunner()


def test_ingest_merges_in_order_and_says_what_happened(tmp_path):
    db = tmp_path / "fab.duckdb"
    tables = fab_tables()
    history = write_drop(
        tmp_path / "history", {k: v for k, v in tables.items() if k != "sort_yield"}
    )
    sort = write_drop(tmp_path / "sort", {"sort_yield": tables["sort_yield"]}, "csv")
    args = ["ingest", str(history), str(sort), str(history), "--db", str(db), "--no-gx"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("history-") and ": merged (lots 2" in lines[0]
    assert lines[1].startswith("sort-") and "merged (sort_yield 6)" in lines[1]
    assert "already merged" in lines[2]
    assert query(db, "SELECT count(*) FROM core.sort_yield") == [(6,)]


def test_ingest_names_every_rejected_drop_on_stderr(tmp_path):
    db = tmp_path / "fab.duckdb"
    good = write_drop(tmp_path / "good", fab_tables())
    bad_lot = write_drop(tmp_path / "badlot", {"wafers": fab_tables(lots=("L777",))["wafers"]})
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "lots.parquet").write_text("not parquet")
    args = [
        "ingest",
        str(bad_lot),
        str(good),
        str(broken),
        str(tmp_path / "nowhere"),
        "--db",
        str(db),
        "--no-gx",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    err = result.stderr
    assert "badlot-" in err and "[unknown_lot]" in err and "wafers.parquet" in err
    assert "broken-" in err and "[not_a_table]" in err and "lots.parquet" in err
    assert "nowhere" in err
    assert err.strip().splitlines()[-1].startswith("rejected: badlot-")
    assert "good-" in result.stdout and "merged" in result.stdout  # the good one still merged


def test_status_lists_the_drop_log(tmp_path):
    db = tmp_path / "fab.duckdb"
    good = write_drop(tmp_path / "good", fab_tables())
    bad = write_drop(tmp_path / "bad", {"wafers": fab_tables(lots=("L777",))["wafers"]})
    runner.invoke(app, ["ingest", str(good), str(bad), str(good), "--db", str(db), "--no-gx"])
    result = runner.invoke(app, ["status", "--db", str(db)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in (
        "merged",
        "rejected",
        "already_merged",
        "unknown_lot (wafers.parquet)",
        "good-",
        "bad-",
    ):
        assert text in out
    missing = runner.invoke(app, ["status", "--db", str(tmp_path / "none.duckdb")])
    assert missing.exit_code == 1


def test_ingest_can_quarantine_rows_instead_of_rejecting(tmp_path):
    db = tmp_path / "fab.duckdb"
    tables = fab_tables()
    tables["wafers"][0]["slot"] = 77
    drop = write_drop(tmp_path / "d", tables)
    result = runner.invoke(
        app, ["ingest", str(drop), "--db", str(db), "--no-gx", "--quarantine-rows"]
    )
    assert result.exit_code == 0, result.output
    assert "[slot_range]" in result.stdout
    assert query(db, "SELECT count(*) FROM core.wafers") == [(5,)]
