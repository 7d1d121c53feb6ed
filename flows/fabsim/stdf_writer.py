"""A small STDF V4 writer: the records a wafer sort file needs, nothing else.

The simulator writes its die-level sort results as the testers would (`yieldrank simulate
--stdf`), and the ingestion tests write the STDF files they feed in (then corrupt some on
purpose). The reader the pipeline uses (`stdf_convert`, see `flows.warehouse.stdf`) has no
writer, so this one is written from the STDF V4 specification; what it writes reads back the
same under stdf_convert (the tests), pystdf 1.4.0 and stdfast 0.2.1 (checked when the reader
was chosen: same dies and bins, no warnings).

Per file: FAR, MIR, then per wafer WIR, a PIR/PRR pair per die, WRR; then the bin summaries
(HBR and SBR, head 255 = all sites) and MRR. Little-endian (CPU_TYPE 2), as every current
tester writes; `byte_order=">"` writes the big-endian variant (CPU_TYPE 1) of old Sun testers.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

# (REC_TYP, REC_SUB) of the records written here
FAR, MIR, MRR, HBR, SBR, WIR, WRR, PIR, PRR = (
    (0, 10), (1, 10), (1, 20), (1, 40), (1, 50), (2, 10), (2, 20), (5, 10), (5, 20),
)  # fmt: skip
PART_FAILED = 0x08  # PRR.PART_FLG bit 3
# the template that maps the simulator's STDF lots and wafers back to its wafer ids
SIM_STDF_WAFER_ID = "{lot}-{wafer:02d}"


@dataclass
class StdfWafer:
    """One wafer's dies: coordinates, hard and soft bins (equal lengths)."""

    wafer: str  # WIR/WRR.WAFER_ID as the tester writes it, e.g. "7" or "07"
    x: Sequence[int]
    y: Sequence[int]
    hard_bin: Sequence[int]
    soft_bin: Sequence[int]
    start_t: int = 0  # seconds since 1970 (U4)


@dataclass
class StdfLot:
    """What one STDF file holds: a lot's wafers and the names of its bins."""

    lot: str
    wafers: list[StdfWafer]
    part_type: str = ""
    hard_bins: dict[int, tuple[str, bool]] = field(default_factory=dict)  # bin -> (name, good)
    soft_bins: dict[int, tuple[str, bool]] = field(default_factory=dict)
    start_t: int = 0


class _Packer:
    def __init__(self, order: str):
        self.order = order

    def record(self, kind: tuple[int, int], body: bytes) -> bytes:
        return struct.pack(f"{self.order}HBB", len(body), *kind) + body

    def fields(self, fmt: str, *values: object) -> bytes:
        return struct.pack(self.order + fmt, *values)

    @staticmethod
    def cn(text: str) -> bytes:
        raw = text.encode("latin-1")
        if len(raw) > 255:
            raise ValueError(f"STDF Cn fields hold at most 255 bytes: {text[:40]!r}...")
        return bytes([len(raw)]) + raw


def stdf_bytes(lot: StdfLot, *, byte_order: str = "<") -> bytes:
    """The STDF V4 file of one lot, as bytes.

    Parameters
    ----------
    lot : the lot, its wafers and bin names
    byte_order : "<" (little-endian, CPU_TYPE 2) or ">" (big-endian, CPU_TYPE 1)

    Returns
    -------
    bytes : the file's content
    """
    if byte_order not in ("<", ">"):
        raise ValueError(f"byte_order must be '<' or '>', got {byte_order!r}")
    p = _Packer(byte_order)
    cn = p.cn
    out = [p.record(FAR, bytes([2 if byte_order == "<" else 1, 4]))]
    mir = p.fields("IIB", lot.start_t, lot.start_t, 1) + b"PN " + p.fields("H", 65535) + b" "
    mir += cn(lot.lot) + cn(lot.part_type) + cn("SIMTESTER") + cn("SIM") + cn("SORT1")
    mir += b"".join(cn("") for _ in range(25))  # JOB_REV .. SUPR_NAM, all empty
    out.append(p.record(MIR, mir))
    hard_counts: dict[int, int] = {}
    soft_counts: dict[int, int] = {}
    n_parts = 0
    for w in lot.wafers:
        out.append(p.record(WIR, p.fields("BBI", 1, 255, w.start_t) + cn(w.wafer)))
        pir = p.record(PIR, bytes([1, 1]))
        good = 0
        for x, y, hb, sb in zip(w.x, w.y, w.hard_bin, w.soft_bin, strict=True):
            passed = lot.hard_bins.get(int(hb), ("", int(hb) == 1))[1]
            good += passed
            flag = 0 if passed else PART_FAILED
            body = p.fields("BBBHHHhhI", 1, 1, flag, 0, hb, sb, x, y, 0) + cn("") + cn("") + b"\0"
            out.append(pir)
            out.append(p.record(PRR, body))
            hard_counts[int(hb)] = hard_counts.get(int(hb), 0) + 1
            soft_counts[int(sb)] = soft_counts.get(int(sb), 0) + 1
        n = len(w.x)
        n_parts += n
        wrr = p.fields("BBIIIIII", 1, 255, w.start_t, n, 0, 0, good, 0) + cn(w.wafer)
        out.append(p.record(WRR, wrr + b"".join(cn("") for _ in range(5))))
    for kind, counts, names in (
        (HBR, hard_counts, lot.hard_bins),
        (SBR, soft_counts, lot.soft_bins),
    ):
        for b in sorted(set(counts) | set(names)):
            name, good = names.get(b, ("", b == 1))
            body = p.fields("BBHI", 255, 0, b, counts.get(b, 0)) + (b"P" if good else b"F")
            out.append(p.record(kind, body + cn(name)))
    out.append(p.record(MRR, p.fields("I", lot.start_t) + b" " + cn("") + cn("")))
    return b"".join(out)


def write_stdf(path: str | Path, lot: StdfLot, *, byte_order: str = "<") -> Path:
    """Write one lot as an STDF V4 file; gzipped when the name ends in `.gz`.

    Parameters
    ----------
    path : the file to write (`.stdf` or `.stdf.gz`)
    lot : the lot, its wafers and bin names
    byte_order : see `stdf_bytes`

    Returns
    -------
    Path : the file written
    """
    path = Path(path)
    data = stdf_bytes(lot, byte_order=byte_order)
    if path.name.endswith(".gz"):
        # no name, mtime 0: the same dies give the same bytes (drops are identified by content)
        with path.open("wb") as raw, gzip.GzipFile("", "wb", fileobj=raw, mtime=0) as gz:
            gz.write(data)
    else:
        path.write_bytes(data)
    return path


def write_sort_stdf(
    dies: pa.Table,
    folder: Path,
    hard_bins: dict[int, tuple[str, bool]],
    test_times: np.ndarray,
    *,
    separator: str = "-",
) -> list[Path]:
    """Write `sort_die` rows (contract columns) as one STDF file per lot into `folder`.

    The contract's wafer id `<lot><separator><wafer>` is split back into the MIR's LOT_ID and
    the WIR's WAFER_ID (the simulator's ids are `L00001-07`: ingest them with the wafer id
    template `{lot}-{wafer:02d}`). The soft bin is the hard bin times 10 (the simulator has no
    soft bins of its own). A lot already written to `folder` gets a numbered second file.

    Parameters
    ----------
    dies : wafer_id, die_x, die_y, bin (the rows of one or more lots, wafers contiguous)
    folder : where the files go (created)
    hard_bins : bin -> (name, good), written as the HBRs
    test_times : seconds since 1970 of each row's wafer test (WIR.START_T)
    separator : between lot and wafer in the wafer id

    Returns
    -------
    list[Path] : the files written
    """
    folder.mkdir(parents=True, exist_ok=True)
    wafer_ids = dies.column("wafer_id").to_numpy(zero_copy_only=False).astype(str)
    x = dies.column("die_x").to_numpy()
    y = dies.column("die_y").to_numpy()
    hard = dies.column("bin").to_numpy()
    # wafers in order of first appearance; each wafer's rows are contiguous
    starts = np.flatnonzero(np.r_[True, wafer_ids[1:] != wafer_ids[:-1]])
    ends = np.r_[starts[1:], len(wafer_ids)]
    lots: dict[str, list[StdfWafer]] = {}
    for a, b in zip(starts, ends, strict=True):
        lot, sep, wafer = str(wafer_ids[a]).rpartition(separator)
        if not sep:
            raise ValueError(f"wafer id {wafer_ids[a]!r} has no {separator!r} before its wafer")
        lots.setdefault(lot, []).append(
            StdfWafer(
                str(int(wafer)), x[a:b], y[a:b], hard[a:b], hard[a:b] * 10, int(test_times[a])
            )
        )
    soft = {10 * b: v for b, v in hard_bins.items()}
    written = []
    for lot, wafers in lots.items():
        path = folder / f"{lot}.stdf"
        k = 1
        while path.exists():
            k += 1
            path = folder / f"{lot}_{k}.stdf"
        start = min(w.start_t for w in wafers)
        written.append(write_stdf(path, StdfLot(lot, wafers, "", hard_bins, soft, start)))
    return written
