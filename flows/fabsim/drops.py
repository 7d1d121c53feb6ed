"""Writing the simulated rows as contract drops (split by when data become known)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from flows.fabsim.stdf_writer import write_sort_stdf
from flows.fabsim.tables import BIN_NAMES, CSV_TIMESTAMP, SCHEMAS, Rows
from flows.fabsim.truth import DropInfo

# ---------------------------------------------------------------------------------------------
# Writing drops
# ---------------------------------------------------------------------------------------------


class DropWriter:
    """Writes each table of each drop as numbered parts, then folds single parts into one file.

    With `stdf`, `sort_die` goes to each drop's `sort/` folder as STDF V4 files (one per lot)
    instead, as the testers deliver it.
    """

    def __init__(
        self,
        out_dir: Path,
        cuts: np.ndarray,
        fmt: str,
        *,
        stdf: bool = False,
        bin_names: dict[int, str] = BIN_NAMES,
    ):
        self.out_dir = out_dir
        self.bin_names = bin_names
        self.cuts = cuts
        self.fmt = fmt
        self.stdf = stdf
        self.names = [f"drop_{d + 1:03d}" for d in range(len(cuts) + 1)]
        self.parts: dict[tuple[int, str], list[Path]] = {}
        self.rows: dict[tuple[int, str], int] = {}

    def write(self, rows: Rows) -> None:
        drop = np.searchsorted(self.cuts, rows.known_at, side="left")
        for d in np.unique(drop):
            part = rows.data.filter(pa.array(drop == d)) if len(self.cuts) else rows.data
            key = (int(d), rows.table)
            if self.stdf and rows.table == "sort_die":
                times = rows.known_at[drop == d] if len(self.cuts) else rows.known_at
                names = {b: (name, b == 1) for b, name in self.bin_names.items()}
                write_sort_stdf(part, self.out_dir / self.names[d] / "sort", names, times)
                self.rows[key] = self.rows.get(key, 0) + part.num_rows
                continue
            paths = self.parts.setdefault(key, [])
            folder = self.out_dir / self.names[d] / rows.table
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"part-{len(paths):03d}.{self.fmt}"
            _write_table(part, path, self.fmt)
            paths.append(path)
            self.rows[key] = self.rows.get(key, 0) + part.num_rows

    def finish(self) -> list[DropInfo]:
        drops = []
        for d, name in enumerate(self.names):
            (self.out_dir / name).mkdir(exist_ok=True)
            tables = {}
            for table in SCHEMAS:
                paths = self.parts.get((d, table), [])
                if len(paths) == 1:  # a single part is delivered as a plain file
                    paths[0].rename(self.out_dir / name / f"{table}.{self.fmt}")
                    paths[0].parent.rmdir()
                if paths or (d, table) in self.rows:
                    tables[table] = self.rows[(d, table)]
            drops.append(DropInfo(name, name, tables))
        return drops


def _write_table(table: pa.Table, path: Path, fmt: str) -> None:
    if fmt == "parquet":
        pq.write_table(table, path, compression="zstd", compression_level=1)
    else:
        pl.from_arrow(table).write_csv(
            path,
            datetime_format=CSV_TIMESTAMP,
            compression="gzip" if fmt == "csv.gz" else "uncompressed",
            check_extension=False,
        )
