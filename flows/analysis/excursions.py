"""Excursions: when a tool or chamber changed, whether it recovered, and what is at risk.

Pure functions (frames in, dataclasses out; no database, no Prefect), for every tool and
chamber of every operation given:

1. **The model without time** (`time_free_offsets`): the layer's binomial-beta yield HGLM as
   `flows.analysis.layers` fits it (product, lot, every tool and chamber of the layer, wafer
   over-dispersion). Each wafer's offset is its linear predictor without the lot and wafer
   random effects: product and every equipment's constant effect are in it, the lot is
   integrated out below with the HGLM's own lot variance.
2. **A change-point search on the equipment's conditional likelihood** (`find_excursions`).
   A wafer's working residual is its empirical logit minus the offset, with variance
   1/(n p (1-p)) (binomial) + sigma_w^2 (over-dispersion). Its equipment's wafers are grouped
   in blocks, one per lot, ordered by their track-in at the operation; candidate onsets are
   the block boundaries. A tool's block residual is the lot's mean residual, with variance
   sigma_lot^2 + its wafers' (a lot runs on one tool per operation, so the lot effect is
   integrated out, as the HGLM's marginal likelihood does). A chamber's block residual is
   the contrast of its wafers with the lot's other wafers at the operation (its sister
   chambers): conditioning on the lot removes the lot effect exactly. On these blocks the
   step model (mean mu before, mu + delta from the onset) is a weighted normal model, the
   Gaussian approximation of the equipment term's conditional likelihood, whose profile
   over the onset is a cumulative sum: every candidate onset of every equipment costs O(1).
   A full HGLM refit per candidate (hundreds per equipment, thousands of permutations)
   would not fit the run's time budget; the AR(1)-over-weeks route (`ar1()`) was not
   taken because it spreads a step over weeks and gives no onset interval.
3. **Calibration**: the statistic is the maximum over onsets of the likelihood ratio; its
   null distribution comes from permuting the blocks' order within each equipment (under
   no change the lots are exchangeable in time), and the p-value is adjusted over every
   equipment of the run by the max-T method of Westfall and Young (the maximum over all
   equipment per permutation). Max-T keeps the family-wise error at the level without the
   Bonferroni loss for the many correlated, discrete statistics, and needs no asymptotics
   for a maximum over a few hundred positions (where Worsley-type bounds are loose).
4. **Greedy selection**: an excursion lowers the fab's mean yield after its onset, which
   every other equipment's lots share in part. The strongest excursion is accepted, its
   step is added to its wafers' offsets ("the other equipment in the model"), and the
   search repeats on the rest until nothing is significant.
5. **Onset interval**: the likelihood-ratio confidence set for the change point, the onsets
   whose profile statistic is within `ONSET_LR_95` of the best. Under a step the statistic
   at the true onset converges to max_t (2 W(t) - |t|) for a two-sided Brownian motion W,
   whose tails are exp(-x/2) on each side: P(<= x) = (1 - exp(-x/2))^2, 0.95 at x = 7.35.
6. **End**: after the onset, a second change back towards the level before (same search
   and calibration on the blocks after the onset, at level `END_ALPHA`); the onset is then
   re-estimated on the blocks before the end.

`flows.analysis.at_risk.at_risk_wafers` lists, for an active excursion, the wafers processed
on its equipment since the lower end of its onset interval, sorted (with their yield) or not.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa

from flows.analysis.layers import _fit_binomial, yield_design

ONSET_LR_95 = 7.35  # the 95 % point of max_t (2 W(t) - |t|): see the module docstring
MIN_BLOCKS = 3  # lots on each side of a candidate change
GRID_POINTS = 30  # candidate onsets (and ends) per equipment in the detection step
END_ALPHA = 0.05
EVENT_PRIORITY = {"pm": 0, "repair": 1, "recipe_change": 2, "other": 3, "qual": 4}
PASS_COLUMNS = ("wafer_id", "lot_id", "layer", "operation", "tool_id", "chamber_id", "track_in_ts")


# ---------------------------------------------------------------------------------------------
# The model without time
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimeFreeModel:
    """Per wafer, the yield model's linear predictor without lot and wafer random effects."""

    offsets: pl.DataFrame  # wafer_id, offset (logit)
    lot_variance: float  # lambda of (1|lot_id), logit scale


def time_free_offsets(frame: pa.Table | pl.DataFrame) -> TimeFreeModel:
    """Fit a layer's yield HGLM (as `flows.analysis.layers` does) and return each wafer's offset.

    Parameters
    ----------
    frame : a layer frame (`flows.analysis.frames`): wafer_id, lot_id, product, dies_good,
        dies_total, tool::<OP>, chamber::<OP>, meas::<OP>::<PARAM>

    Returns
    -------
    TimeFreeModel : offsets of the sorted wafers (fixed part plus every tool's and chamber's
        predicted effect) and the lot variance

    Raises
    ------
    ValueError : the fit did not converge (the message says so)
    """
    design = yield_design(frame)
    res = _fit_binomial(design.formula, design.data)
    if not res.converged:
        raise ValueError(f"the time-free yield model did not converge ({res.diagnostics})")
    data = design.data
    assert isinstance(data, pd.DataFrame)
    eta = np.asarray(res.predict(type="link", random=False), dtype=float)
    ranef = res.ranef
    for name in design.groups:
        v = ranef[name]["v"]
        eta = eta + data[name].map(v).to_numpy(dtype=float)
    offsets = pl.DataFrame({"wafer_id": data["wafer_id"].to_numpy(), "offset": eta})
    return TimeFreeModel(offsets, float(res.lambdas["lot_id"]))


# ---------------------------------------------------------------------------------------------
# Equipment series
# ---------------------------------------------------------------------------------------------


@dataclass
class _Series:
    """One tool or chamber at one operation: its wafers in blocks (one per lot, in time)."""

    layer: str
    operation: str
    tool_id: str
    chamber_id: str | None
    wafers: np.ndarray  # index into the wafer arrays: the unit's sorted wafers
    block: np.ndarray  # per entry of `wafers`: its block 0..m-1
    others: np.ndarray  # chambers: the same lots' wafers on the sister chambers
    others_block: np.ndarray
    first_ts: np.ndarray  # per block: first track-in on the unit (datetime64[us])
    last_ts: np.ndarray  # per block: last track-in

    @property
    def n_blocks(self) -> int:
        return len(self.first_ts)


def _block_residuals(
    s: _Series, e: np.ndarray, var: np.ndarray, lot_variance: float
) -> tuple[np.ndarray, np.ndarray]:
    """Each block's residual and its variance (see the module docstring)."""
    m = s.n_blocks
    w = 1.0 / var[s.wafers]
    sw = np.bincount(s.block, w, m)
    mean = np.bincount(s.block, w * e[s.wafers], m) / sw
    if s.chamber_id is None:
        return mean, lot_variance + 1.0 / sw
    wo = 1.0 / var[s.others]
    swo = np.bincount(s.others_block, wo, m)
    mean_o = np.bincount(s.others_block, wo * e[s.others], m) / swo
    return mean - mean_o, 1.0 / sw + 1.0 / swo


def _split_lr(r: np.ndarray, v: np.ndarray, min_blocks: int = MIN_BLOCKS) -> np.ndarray:
    """Likelihood ratio (2 x log) of a step at each block boundary vs none; along the last axis.

    Entry k is the step whose first changed block is k + min_blocks. Works on (..., m) arrays
    so that all permutations of one equipment go at once.
    """
    w = 1.0 / v
    sw = np.cumsum(w, axis=-1)
    sr = np.cumsum(w * r, axis=-1)
    total_w, total_r = sw[..., -1:], sr[..., -1:]
    k = slice(min_blocks - 1, r.shape[-1] - min_blocks)
    w1, s1 = sw[..., k], sr[..., k]
    w2, s2 = total_w - w1, total_r - s1
    return s1**2 / w1 + s2**2 / w2 - total_r**2 / total_w


def _max_lr_null(r: np.ndarray, v: np.ndarray, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """The maximum single-change LR over onsets for `n_perm` random orders of the blocks."""
    order = rng.permuted(np.tile(np.arange(len(r)), (n_perm, 1)), axis=1)
    return _split_lr(r[order], v[order]).max(axis=1)


def _windows(m: int, grid: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Candidate excursions [a, b): onset block a, first block after it b (m: still on).

    At least MIN_BLOCKS lots before the onset, during the excursion and after its end; a and
    b every `grid` blocks (the search's coarse grid, `_grid`)."""
    a_all, b_all = [], []
    for a in range(MIN_BLOCKS, m - MIN_BLOCKS + 1, grid):
        ends = [*range(a + MIN_BLOCKS, m - MIN_BLOCKS + 1, grid), m]
        a_all += [a] * len(ends)
        b_all += ends
    return np.array(a_all, dtype=np.int64), np.array(b_all, dtype=np.int64)


def _window_lr(r: np.ndarray, v: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """LR (2 x log) of a lower level on blocks [a, b) against none; along the last axis.

    One-sided: a window whose level is higher than the rest counts 0 (an excursion loses
    yield). With b = m this is the step that stays; otherwise the level comes back at b."""
    w = 1.0 / v
    zero = np.zeros((*r.shape[:-1], 1))
    cw = np.concatenate([zero, np.cumsum(w, axis=-1)], axis=-1)
    cr = np.concatenate([zero, np.cumsum(w * r, axis=-1)], axis=-1)
    total_w, total_r = cw[..., -1:], cr[..., -1:]
    w_in = cw[..., b] - cw[..., a]
    s_in = cr[..., b] - cr[..., a]
    w_out, s_out = total_w - w_in, total_r - s_in
    lr = s_in**2 / w_in + s_out**2 / w_out - total_r**2 / total_w
    return np.where(s_in / w_in < s_out / w_out, lr, 0.0)


def _grid(m: int) -> int:
    """Detection tries onsets and ends every few lots on long series: about GRID_POINTS
    positions each, so that the windows' permutation null stays affordable (the LR near the
    best window is flat within a lot or two); the onset and end are then located at every
    block."""
    return max(1, -(-m // GRID_POINTS))


def _max_window_lr(r: np.ndarray, v: np.ndarray) -> float:
    return float(_window_lr(r, v, *_windows(len(r), _grid(len(r)))).max())


def _max_window_null(
    r: np.ndarray, v: np.ndarray, n_perm: int, rng: np.random.Generator, chunk: int = 100
) -> np.ndarray:
    """The maximum window LR for `n_perm` random orders of the blocks (in chunks: memory)."""
    a, b = _windows(len(r), _grid(len(r)))
    out = []
    for k in range(0, n_perm, chunk):
        n = min(chunk, n_perm - k)
        order = rng.permuted(np.tile(np.arange(len(r)), (n, 1)), axis=1)
        out.append(_window_lr(r[order], v[order], a, b).max(axis=1))
    return np.concatenate(out)


def _step(r: np.ndarray, v: np.ndarray, first: int) -> tuple[float, float]:
    """The level before block `first` and the step after, by weighted means."""
    w = 1.0 / v
    before = float(np.sum(w[:first] * r[:first]) / np.sum(w[:first]))
    after = float(np.sum(w[first:] * r[first:]) / np.sum(w[first:]))
    return before, after - before


# ---------------------------------------------------------------------------------------------
# Findings
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Excursion:
    """A tool or chamber effect limited in time: the contract's finding of effect `excursion`.

    `estimate` is the step on the yield logit; `yield_impact` the yield points lost by the
    wafers of the operation (all of them, as the layer findings count), `yield_impact_affected`
    by the wafers processed on the equipment during the excursion. `p_value` is adjusted over
    all equipment searched (max-T); `p_raw` is the equipment's own permutation p-value.
    `event` is the contract's text: the event before onset and, when ended, before the end.
    """

    layer: str
    operation: str
    tool_id: str
    chamber_id: str | None
    estimate: float
    onset_ts: datetime
    onset_low: datetime
    onset_high: datetime
    end_ts: datetime | None
    end_low: datetime | None  # the end's 95 % interval (not in the contract; for the picture)
    end_high: datetime | None
    active: bool
    event: str | None
    onset_event: str | None
    end_event: str | None
    yield_impact: float
    yield_impact_affected: float
    p_value: float
    p_raw: float
    lr: float
    n_lots_before: int
    n_lots_during: int
    effect: str = field(default="excursion")


def _ts(x: np.datetime64) -> datetime:
    return pd.Timestamp(x).to_pydatetime()


def _mid(a: np.datetime64, b: np.datetime64) -> datetime:
    return _ts(a + (b - a) // 2)


def _event_before(
    events: pl.DataFrame | None,
    s: _Series,
    low: np.datetime64,
    high: np.datetime64,
    point: np.datetime64,
) -> str | None:
    """The equipment's event that best explains a change dated `point` in (low, high].

    Inside the interval the maintenance kinds come first (a qual follows its PM: the PM is
    the change), then the nearest to `point`; with none inside, the latest before it.
    """
    if events is None or events.height == 0:
        return None
    mine = events.filter(
        (pl.col("tool_id") == s.tool_id)
        & (pl.col("chamber_id").is_null() | (pl.col("chamber_id") == (s.chamber_id or "")))
        & (pl.col("event_ts") <= _ts(high))
    )
    if mine.height == 0:
        return None
    ts = mine.get_column("event_ts").to_numpy().astype("datetime64[us]")
    kinds = mine.get_column("kind").to_list()
    inside = np.flatnonzero(ts >= low)
    if len(inside):
        rank = [
            (EVENT_PRIORITY.get(kinds[i], 3), abs(int((ts[i] - point).astype(np.int64))))
            for i in inside
        ]
        best = int(inside[min(range(len(inside)), key=rank.__getitem__)])
    else:
        best = int(np.argmax(ts))
    return f"{kinds[best]}@{_ts(ts[best]).isoformat()}"


def _lr_set(lr: np.ndarray, first: int) -> tuple[int, int, int]:
    """Best position and the ends of its likelihood-ratio 95 % set; positions count from
    `first` (the block of `lr[0]`)."""
    best = int(np.argmax(lr))
    inside = np.flatnonzero(lr >= lr[best] - ONSET_LR_95)
    return best + first, int(inside.min()) + first, int(inside.max()) + first


def _onset_set(r: np.ndarray, v: np.ndarray, stop: int) -> tuple[int, int, int]:
    """The onset (block) of an excursion lasting until block `stop`, with its 95 % set."""
    a = np.arange(MIN_BLOCKS, stop - MIN_BLOCKS + 1)
    return _lr_set(_window_lr(r, v, a, np.full(len(a), stop)), MIN_BLOCKS)


def _end_search(
    r: np.ndarray, v: np.ndarray, onset: int, n_perm: int, rng: np.random.Generator
) -> tuple[int, int, int] | None:
    """A change back up after block `onset`: (end block, set low, set high), or None.

    Tested on the blocks from the onset on, by the single-change LR and its permutation
    null there (level END_ALPHA): an active excursion is declared ended only on evidence."""
    tail_r, tail_v = r[onset:], v[onset:]
    if len(tail_r) < 2 * MIN_BLOCKS:
        return None
    lr = _split_lr(tail_r, tail_v)
    end, low, high = _lr_set(lr, MIN_BLOCKS)
    _, back = _step(tail_r, tail_v, end)
    if back <= 0:  # a further drop is not an end
        return None
    p = (1 + np.sum(_max_lr_null(tail_r, tail_v, n_perm, rng) >= lr.max())) / (n_perm + 1)
    if p >= END_ALPHA:
        return None
    return onset + end, onset + low, onset + high


def find_excursions(
    passes: pl.DataFrame,
    wafers: pl.DataFrame,
    lot_variance: float,
    events: pl.DataFrame | None = None,
    *,
    alpha: float = 0.05,
    n_perm: int = 499,
    max_excursions: int = 5,
    seed: int = 0,
) -> list[Excursion]:
    """Search every tool and chamber of every operation in `passes` for steps in time.

    Parameters
    ----------
    passes : one row per wafer and operation: wafer_id, lot_id, layer, operation, tool_id,
        chamber_id (null on a single-chamber tool), track_in_ts (the wafer's first pass)
    wafers : one row per sorted wafer: wafer_id, dies_good, dies_total, offset (the logit of
        the model without time, `time_free_offsets`)
    lot_variance : the lot random effect's variance on the logit scale (from the same model)
    events : equipment_events (tool_id, chamber_id, event_ts, kind), optional
    alpha : family-wise level over all equipment searched
    n_perm : permutations of the blocks' order per equipment
    max_excursions : stop after this many
    seed : the permutations' seed

    Returns
    -------
    list of Excursion : the significant ones, strongest first

    Raises
    ------
    ValueError : a column is missing or a yield is impossible
    """
    missing = [c for c in PASS_COLUMNS if c not in passes.columns]
    missing += [c for c in ("wafer_id", "dies_good", "dies_total", "offset") if c not in wafers]
    if missing:
        raise ValueError(f"find_excursions: missing columns {missing}")
    bad = wafers.filter(
        (pl.col("dies_total") <= 0) | (pl.col("dies_good") < 0)
        | (pl.col("dies_good") > pl.col("dies_total"))
    )  # fmt: skip
    if bad.height:
        raise ValueError(
            f"find_excursions: {bad.height} wafers with dies_good outside 0..dies_total, "
            f"e.g. {bad.get_column('wafer_id')[0]}"
        )
    rng = np.random.default_rng(seed)
    y = wafers.get_column("dies_good").to_numpy().astype(float)
    n = wafers.get_column("dies_total").to_numpy().astype(float)
    offset = wafers.get_column("offset").to_numpy().astype(float)
    logit = np.log((y + 0.5) / (n - y + 0.5))
    e = logit - offset
    binomial_var = 1.0 / (y + 0.5) + 1.0 / (n - y + 0.5)
    series = _series(passes, wafers)
    var = binomial_var + _wafer_variance(e, binomial_var, wafers, passes)

    found: list[Excursion] = []
    searched = list(range(len(series)))
    while len(found) < max_excursions and searched:
        blocks = [_block_residuals(series[i], e, var, lot_variance) for i in searched]
        stats = [_max_window_lr(r, v) for r, v in blocks]
        per_series = [_max_window_null(r, v, n_perm, rng) for r, v in blocks]
        nulls = np.max(per_series, axis=0)
        best = int(np.argmax(stats))
        p_adj = (1 + np.sum(nulls >= stats[best])) / (n_perm + 1)
        if p_adj >= alpha:
            break
        s = series[searched[best]]
        r, v = blocks[best]
        p_raw = (1 + np.sum(per_series[best] >= stats[best])) / (n_perm + 1)
        exc, hit, delta = _describe(s, r, v, e, offset, stats[best], p_adj, p_raw, events, rng)
        n_op = passes.filter(pl.col("operation") == s.operation).get_column("wafer_id")
        n_op_sorted = int(wafers.get_column("wafer_id").is_in(n_op.implode()).sum())
        impact_all = exc.yield_impact_affected * len(hit) / max(n_op_sorted, 1)
        found.append(_with_impact(exc, impact_all))
        e[hit] -= delta  # the excursion joins the model: the rest is searched without it
        searched.pop(best)
    return found


def _with_impact(exc: Excursion, impact: float) -> Excursion:
    return replace(exc, yield_impact=impact)


def _describe(
    s: _Series,
    r: np.ndarray,
    v: np.ndarray,
    e: np.ndarray,
    offset: np.ndarray,
    lr: float,
    p_adj: float,
    p_raw: float,
    events: pl.DataFrame | None,
    rng: np.random.Generator,
) -> tuple[Excursion, np.ndarray, float]:
    """Onset, its interval, the end and the loss of one accepted excursion."""
    a, b = _windows(s.n_blocks)
    best = int(np.argmax(_window_lr(r, v, a, b)))
    onset = int(a[best])
    ended = _end_search(r, v, onset, 199, rng)
    stop = s.n_blocks if ended is None else ended[0]
    if stop - MIN_BLOCKS >= MIN_BLOCKS:
        onset, low, high = _onset_set(r, v, stop)
    else:
        low = high = onset
    if ended is not None:  # the end again, given the onset
        ends = np.arange(onset + MIN_BLOCKS, s.n_blocks - MIN_BLOCKS + 1)
        lr_end = _window_lr(r, v, np.full(len(ends), onset), ends)
        stop, end_low, end_high = _lr_set(lr_end, onset + MIN_BLOCKS)
        ended = (stop, end_low, end_high)
    w = 1.0 / v
    inside = slice(onset, stop)
    rest = np.r_[0:onset, stop : s.n_blocks]
    delta = float(
        np.sum(w[inside] * r[inside]) / np.sum(w[inside])
        - np.sum(w[rest] * r[rest]) / np.sum(w[rest])
    )
    in_window = (s.block >= onset) & (s.block < stop)
    hit = s.wafers[in_window]
    level = offset[hit] + e[hit]  # observed logits of the hit wafers
    loss = float(100 * np.mean(_expit(level - delta) - _expit(level))) if len(hit) else 0.0
    f, la = s.first_ts, s.last_ts
    onset_ts = _mid(la[onset - 1], f[onset])
    # the lower end takes the whole block before the set: an onset inside a lot's wafers
    # leaves that lot partly hit, and the search may date it one lot late
    # and the upper end the whole last block of the set, for the same reason
    onset_low, onset_high = _ts(f[max(low - 1, 0)]), _ts(la[high])
    end_ts = end_low = end_high = None
    end_event = None
    if ended is not None:
        end_ts = _mid(la[stop - 1], f[stop])
        first_end, last_end = f[max(ended[1] - 1, 0)], la[ended[2]]
        end_event = _event_before(
            events, s, first_end, last_end, np.datetime64(end_ts).astype("datetime64[us]")
        )
        end_low, end_high = _ts(first_end), _ts(last_end)
    point = np.datetime64(onset_ts).astype("datetime64[us]")
    onset_event = _event_before(events, s, f[max(low - 1, 0)], la[high], point)
    text = "; ".join(x for x in (onset_event, end_event) if x) or None
    exc = Excursion(
        layer=s.layer,
        operation=s.operation,
        tool_id=s.tool_id,
        chamber_id=s.chamber_id,
        estimate=delta,
        onset_ts=onset_ts,
        onset_low=onset_low,
        onset_high=onset_high,
        end_ts=end_ts,
        end_low=end_low,
        end_high=end_high,
        active=ended is None,
        event=text,
        onset_event=onset_event,
        end_event=end_event,
        yield_impact=0.0,
        yield_impact_affected=loss,
        p_value=float(p_adj),
        p_raw=float(p_raw),
        lr=float(lr),
        n_lots_before=onset,
        n_lots_during=stop - onset,
    )
    return exc, hit, delta


def _expit(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _wafer_variance(
    e: np.ndarray, binomial_var: np.ndarray, wafers: pl.DataFrame, passes: pl.DataFrame
) -> float:
    """sigma_w^2: the pooled within-lot variance of the residuals less the binomial part."""
    lots = (
        wafers.select("wafer_id")
        .join(passes.select("wafer_id", "lot_id").unique("wafer_id"), on="wafer_id", how="left")
        .get_column("lot_id")
    )
    codes = lots.cast(pl.Categorical).to_physical().to_numpy()
    count = np.bincount(codes)
    mean = np.bincount(codes, e) / np.maximum(count, 1)
    within = np.sum((e - mean[codes]) ** 2) / max(len(e) - len(count), 1)
    return max(within - float(np.mean(binomial_var)), 0.0)


def _series(passes: pl.DataFrame, wafers: pl.DataFrame) -> list[_Series]:
    """Every tool and every chamber of a multi-chamber tool, per operation."""
    index = wafers.select("wafer_id").with_row_index("w")
    # sorted, so that the series and the permutations drawn for them do not depend on the
    # input's row order (the same data give the same p-values)
    p = (
        passes.join(index, on="wafer_id", how="inner")
        .with_columns(pl.col("track_in_ts").cast(pl.Datetime("us")))
        .sort("layer", "operation", "tool_id", "track_in_ts", "wafer_id")
    )
    out: list[_Series] = []
    for (layer, op, tool), g in p.group_by(["layer", "operation", "tool_id"], maintain_order=True):
        out.append(_one_series(g, str(layer), str(op), str(tool), None, None))
        chambers = g.get_column("chamber_id").drop_nulls().unique().sort().to_list()
        if len(chambers) >= 2:
            for ch in chambers:
                out.append(_one_series(g, str(layer), str(op), str(tool), ch, g))
    return [s for s in out if s.n_blocks >= 2 * MIN_BLOCKS]


def _one_series(
    g: pl.DataFrame, layer: str, op: str, tool: str, chamber: str | None, lot_rows: pl.DataFrame
) -> _Series:
    mine = g if chamber is None else g.filter(pl.col("chamber_id") == chamber)
    blocks = (
        mine.group_by("lot_id")
        .agg(pl.col("track_in_ts").min().alias("first"), pl.col("track_in_ts").max().alias("last"))
        .sort("first", "lot_id")
        .with_row_index("block")
    )
    if chamber is not None:  # only lots with wafers on a sister chamber give a contrast
        others = lot_rows.filter(pl.col("chamber_id") != chamber).join(
            blocks.select("lot_id", "block"), on="lot_id"
        )
        blocks = blocks.filter(pl.col("lot_id").is_in(others.get_column("lot_id").implode()))
        blocks = blocks.drop("block").with_row_index("block")
        others = lot_rows.filter(pl.col("chamber_id") != chamber).join(
            blocks.select("lot_id", "block"), on="lot_id"
        )
        mine = mine.join(blocks.select("lot_id", "block"), on="lot_id")
        o_w = others.get_column("w").to_numpy()
        o_b = others.get_column("block").to_numpy().astype(np.int64)
    else:
        mine = mine.join(blocks.select("lot_id", "block"), on="lot_id")
        o_w = o_b = np.zeros(0, dtype=np.int64)
    return _Series(
        layer=layer,
        operation=op,
        tool_id=tool,
        chamber_id=chamber,
        wafers=mine.get_column("w").to_numpy().astype(np.int64),
        block=mine.get_column("block").to_numpy().astype(np.int64),
        others=o_w.astype(np.int64),
        others_block=o_b,
        first_ts=blocks.get_column("first").to_numpy().astype("datetime64[us]"),
        last_ts=blocks.get_column("last").to_numpy().astype("datetime64[us]"),
    )
