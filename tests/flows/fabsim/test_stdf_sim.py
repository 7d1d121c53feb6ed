"""`simulate_fab(..., FabConfig(stdf=True))` (`yieldrank simulate --stdf`): the die-level sort
results as STDF V4 files, which ingest to exactly the rows of the Parquet path."""

from __future__ import annotations

import pytest

from flows.fabsim.config import FabConfig
from flows.fabsim.simulation import simulate_fab
from flows.fabsim.stdf_writer import SIM_STDF_WAFER_ID
from tests.flows.conftest import ingest, query

CONFIG = {"lots": 8, "n_drops": 2, "sort_die_fraction": 0.5, "bin_defs": True}


@pytest.fixture(scope="module")
def both_ways(tmp_path_factory):
    """The same fab (seed) simulated with sort_die as Parquet and as STDF, each ingested."""
    root = tmp_path_factory.mktemp("stdf_sim")
    dbs = {}
    for way, stdf in (("parquet", False), ("stdf", True)):
        truth = simulate_fab(root / way, FabConfig(**CONFIG, stdf=stdf), seed=11)
        dbs[way] = root / f"{way}.duckdb"
        for drop in truth.drop_dirs:
            result = ingest(drop, dbs[way], stdf_wafer_id=SIM_STDF_WAFER_ID)
            assert result.status == "merged", [str(p) for p in result.problems]
    return root, dbs


def test_stdf_drops_hold_sort_files_instead_of_sort_die(both_ways):
    root, _ = both_ways
    stdf_files = sorted(p.relative_to(root / "stdf") for p in (root / "stdf").rglob("*.stdf"))
    assert stdf_files and all(p.parts[1] == "sort" for p in stdf_files)
    assert not list((root / "stdf").rglob("sort_die*"))
    assert list((root / "parquet").rglob("sort_die*")) and not list(
        (root / "parquet").rglob("sort")
    )
    # one file per lot and drop, named after the lot
    assert all(p.name.startswith("L") for p in stdf_files)


def test_stdf_round_trip_equals_the_parquet_sort_die_row_for_row(both_ways):
    _, dbs = both_ways
    sql = "SELECT wafer_id, die_x, die_y, bin FROM core.sort_die ORDER BY ALL"
    parquet, stdf = query(dbs["parquet"], sql), query(dbs["stdf"], sql)
    assert len(parquet) > 10_000
    assert stdf == parquet
    yields = "SELECT * FROM core.wafer_yield ORDER BY wafer_id"
    assert query(dbs["stdf"], yields) == query(dbs["parquet"], yields)
    bins = "SELECT bin, name, good FROM core.bin_defs ORDER BY bin"
    assert query(dbs["stdf"], bins) == query(dbs["parquet"], bins)
    # the simulator's soft bin (hard bin x 10) is kept beside it
    assert query(
        dbs["stdf"],
        "SELECT count(*) FROM core.sort_die WHERE CAST(extra->>'soft_bin' AS INT) <> 10 * bin",
    ) == [(0,)]
