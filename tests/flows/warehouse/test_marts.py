"""The mart checks of sql/marts/checks.toml: every mart declared, broken marts named."""

from __future__ import annotations

import pytest

from flows.analysis.frames import layer_frames
from flows.warehouse.db import connect
from flows.warehouse.marts import MartCheckError, check_marts, mart_checks, mart_names


def test_every_mart_has_checks_and_a_merged_fab_passes_them(base_db):
    con = connect(base_db)
    try:
        assert set(mart_names(con)) == set(mart_checks())
        check_marts(con)  # raises on any broken rule
        for check in mart_checks().values():  # every declared column exists in its mart
            cols = {d[0] for d in con.sql(f"SELECT * FROM marts.{check.mart} LIMIT 0").description}
            assert set(check.key + check.not_null) <= cols, check.mart
    finally:
        con.close()


def test_a_repeated_wafer_breaks_the_marts_key_and_stops_the_analysis(base_db):
    con = connect(base_db)
    try:
        con.execute("INSERT INTO core.wafers SELECT * FROM core.wafers WHERE wafer_id = 'L001.01'")
        with pytest.raises(
            MartCheckError,
            match=r"marts.wafer_frame: key \(wafer_id\) is not unique: 1 keys repeated, e.g. wafer_id='L001.01' \(2 rows\)",
        ):
            check_marts(con, ("wafer_frame",))
    finally:
        con.close()
    with pytest.raises(MartCheckError, match=r"marts\.wafer_frame"):
        layer_frames(base_db)


def test_a_wafer_without_its_lot_leaves_a_null_product_that_the_check_names(base_db):
    con = connect(base_db)
    try:
        con.execute("DELETE FROM core.lots WHERE lot_id = 'L002'")
        with pytest.raises(
            MartCheckError, match=r"marts.wafer_frame: not-null column product is NULL in 3 rows"
        ):
            check_marts(con, ("wafer_frame",))
    finally:
        con.close()


def test_a_mart_without_declared_checks_is_an_error(base_db):
    con = connect(base_db)
    try:
        con.execute("CREATE VIEW marts.unchecked AS SELECT 1 AS x")
        with pytest.raises(MartCheckError, match=r"marts\.unchecked has no checks"):
            check_marts(con)
    finally:
        con.close()


def test_the_checks_file_itself_is_validated(tmp_path, monkeypatch):
    import flows.warehouse.marts as marts

    bad = tmp_path / "checks.toml"
    bad.write_text('[wafer_frame]\nnot_null = ["lot_id"]\n')
    monkeypatch.setattr(marts, "CHECKS_FILE", bad)
    marts.mart_checks.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"\[wafer_frame\]: needs a non-empty `key`"):
            marts.mart_checks()
    finally:
        marts.mart_checks.cache_clear()
