"""The report's charts: each one a `Chart` that draws into axes it is given.

The same drawing code serves both outputs: the HTML report renders every chart
alone on a small figure and embeds it as a base64 PNG, the PDF report places it
on an A4 page among the text. Charts use `matplotlib.figure.Figure` directly
(never pyplot), so no global state and no display are involved.

Labels come from data (tool ids, layer names); `text.parse_math` is off so a
tool named `$x$` or one with a lone `$` is printed as written, not parsed.
"""

from __future__ import annotations

import base64
import io
import math
import os
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from flows.analysis.results import RandomEffect

INK = "#1f2a33"
MUTED = "#8a96a0"
GRID = "#e3e7ea"
BLUE = "#2f5f8a"
RED = "#b03a2e"
GREEN = "#3f7f55"
KIND_COLOURS = {
    "lot": "#2f5f8a",
    "wafer": "#6f97bb",
    "tool": "#b03a2e",
    "chamber": "#d98b3a",
    "residual": "#a7b1b8",
    "other": "#5c6b73",
}
Z95 = stats.norm.ppf(0.975)

# One style for every chart, PNG and PDF alike. TrueType fonts in the PDF keep its
# text extractable (Type 3 glyphs are not reliably searchable).
STYLE = {
    "font.size": 7.5,
    "axes.titlesize": 8,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.labelsize": 7.5,
    "axes.edgecolor": MUTED,
    "axes.labelcolor": INK,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": GRID,
    "grid.linewidth": 0.6,
    "xtick.color": INK,
    "ytick.color": INK,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 6.5,
    "legend.frameon": False,
    "text.color": INK,
    "text.parse_math": False,
    "pdf.fonttype": 42,
    "svg.fonttype": "none",
}

Draw = Callable[[Sequence[Axes]], None]
T = TypeVar("T")


@dataclass(frozen=True)
class Chart:
    """A chart to draw: `panels` axes side by side, `height` inches tall at 7.2 in wide."""

    key: str
    title: str
    draw: Draw
    panels: int = 1
    height: float = 2.6
    alt: str = ""


@dataclass(frozen=True)
class RenderedChart:
    """A chart rendered once as PNG, embedded in the HTML and placed on the PDF pages."""

    key: str
    title: str
    alt: str
    png: bytes
    width_px: int
    height_px: int
    dpi: int

    @property
    def png_base64(self) -> str:
        return base64.b64encode(self.png).decode("ascii")

    def css_size(self, css_dpi: float = 96 * 0.95) -> tuple[int, int]:
        """Display size in CSS pixels: about the chart's physical size, so the high-resolution
        PNG looks sharp on dense screens and has the same size in every browser."""
        scale = css_dpi / self.dpi
        return round(self.width_px * scale), round(self.height_px * scale)


WIDTH_IN = 7.2  # the PDF's text width; the HTML shows charts at about this physical size too
DPI = 150  # one rendering serves both outputs: sharp in print, fine on screen


@contextmanager
def report_style() -> Iterator[None]:
    """The report's matplotlib style; a glyph the font lacks (an id in CJK) draws as a box,
    which is no reason to warn on every chart."""
    with matplotlib.rc_context(STYLE), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")
        yield


def render_png(chart: Chart, width: float = WIDTH_IN, dpi: int = DPI) -> RenderedChart:
    with report_style():
        fig = Figure(figsize=(width, chart.height), dpi=dpi, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, chart.panels, squeeze=False)[0]
        chart.draw(list(axes))
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    png = buf.getvalue()
    w, h = _png_size(png)
    return RenderedChart(chart.key, chart.title, chart.alt or chart.title, png, w, h, dpi)


@dataclass(frozen=True)
class ChartFailure:
    """A chart that raised while it was drawn: the report prints `note` in its place."""

    key: str
    title: str
    error: str  # the exception and where the report's code raised it

    @property
    def note(self) -> str:
        return f"chart not drawn: {self.title} ({self.error})"

    @classmethod
    def of(cls, key: str, title: str, exc: Exception) -> ChartFailure:
        """The failure `exc`, with the line of the report's code that raised it."""
        frames = traceback.extract_tb(exc.__traceback__)
        ours = [f for f in frames if f"{os.sep}flows{os.sep}" in f.filename] or frames
        where = f" at {Path(ours[-1].filename).name} line {ours[-1].lineno}" if ours else ""
        return cls(key, title, f"{type(exc).__name__}: {exc}{where}")


def guarded_chart(title: str, make: Callable[..., T], *args: Any) -> T | ChartFailure:
    """`make(*args)`, or the note of its failure: preparing one chart must not cost the report."""
    try:
        return make(*args)
    except Exception as exc:
        return ChartFailure.of(getattr(make, "__name__", "chart"), title, exc)


def render_or_note(chart: Chart) -> RenderedChart | ChartFailure:
    """`render_png`, or a `ChartFailure` saying why: no chart may cost the whole report.

    A chart draws data no test has seen (a year of one fab, a tool with one wafer); whatever
    it raises is that chart's problem, recorded with the line of the report's code it came
    from, so that the run can say which chart failed and the report can show the rest.
    """
    try:
        return render_png(chart)
    except Exception as exc:
        return ChartFailure.of(chart.key, chart.title, exc)


def _png_size(png: bytes) -> tuple[int, int]:
    # The IHDR chunk sits at a fixed offset in every PNG.
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def short(label: str, n: int = 28) -> str:
    """Keep axis labels readable: long ids are cut with an ellipsis (full text is in the tables)."""
    label = printable(label)
    return label if len(label) <= n else label[: n - 1] + "…"


def printable(text: object) -> str:
    """`text` as a font can draw it: lone surrogates (invalid UTF-16 halves) become '?'."""
    return str(text).encode("utf-8", "replace").decode("utf-8")


# ---- ranking ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImpactBar:
    label: str
    impact: float
    ci_low: float | None
    ci_high: float | None
    significant: bool


def pareto(bars: Sequence[ImpactBar]) -> Chart:
    """Loss per layer in the order given (the ranking's), with 95 % intervals and the cumulative
    share; a layer without a significant loss stands at 0 without an interval."""

    def draw(axes: Sequence[Axes]) -> None:
        ax = axes[0]
        x = np.arange(len(bars))
        impact = np.array([b.impact for b in bars])
        colours = [RED if b.significant else BLUE for b in bars]
        ax.bar(x, impact, color=colours, width=0.65, zorder=2)
        lo = np.array([max(b.ci_low, 0.0) if b.ci_low is not None else b.impact for b in bars])
        hi = np.array([b.ci_high if b.ci_high is not None else b.impact for b in bars])
        ax.errorbar(
            x, impact, yerr=[impact - lo, hi - impact], fmt="none", ecolor=INK, lw=0.9, capsize=3
        )
        ax.axhline(0, color=MUTED, lw=0.8)
        ax.set_xticks(x, [short(b.label, 14) for b in bars], rotation=30 if len(bars) > 8 else 0)
        for xi, b in zip(x, bars, strict=True):
            if not b.significant:
                ax.annotate(
                    "no loss found",
                    (xi, 0),
                    ha="center",
                    va="bottom",
                    fontsize=6,
                    color=MUTED,
                    rotation=90,
                    xytext=(0, 3),
                    textcoords="offset points",
                )
        ax.set_ylabel("loss (points of fab yield)")
        ax.set_title("Loss by layer in the ranking's order, 95 % intervals (red: significant)")
        total = np.clip(impact, 0, None).sum()
        if total > 0:
            share = ax.twinx()
            share.plot(x, 100 * np.cumsum(np.clip(impact, 0, None)) / total, color=MUTED, lw=1)
            share.plot(x, 100 * np.cumsum(np.clip(impact, 0, None)) / total, "o", ms=2.5, c=MUTED)
            share.set_ylim(0, 105)
            share.set_ylabel("cumulative share of the loss (%)", color=MUTED)
            share.grid(False)
            share.spines["right"].set_visible(True)
            share.tick_params(axis="y", colors=MUTED)

    return Chart(
        "pareto",
        "Loss by layer",
        draw,
        height=2.9,
        # the bars' order in words, from the very list drawn: what a reader (and a test) checks
        alt="Pareto chart of the loss by layer with 95 % intervals, left to right: "
        + ", ".join(b.label for b in bars),
    )


# ---- one layer ----------------------------------------------------------------------------


def variance_kind(term: str) -> str:
    """Group a variance component's term ("tool:GATE_ETCH") under lot/wafer/tool/chamber/residual."""
    head = term.split(":", 1)[0].strip().lower()
    for kind in ("chamber", "tool", "wafer", "lot", "residual"):
        if head.startswith(kind):
            return kind
    return "other"


def variance_components(layer: str, varcomp: dict[str, float]) -> Chart:
    terms = list(varcomp)
    values = np.array([max(float(varcomp[t]), 0.0) for t in terms])
    total = values.sum()

    def draw(axes: Sequence[Axes]) -> None:
        ax = axes[0]
        y = np.arange(len(terms))[::-1]
        colours = [KIND_COLOURS[variance_kind(t)] for t in terms]
        ax.barh(y, values, color=colours, height=0.6, zorder=2)
        for yi, v in zip(y, values, strict=True):
            share = f"{100 * v / total:.0f} %" if total > 0 else ""
            ax.text(v, yi, f" {v:.3g}  {share}", va="center", fontsize=6.5, color=INK)
        ax.set_yticks(y, [short(t, 34) for t in terms])
        ax.set_xlim(0, values.max() * 1.35 if total > 0 else 1)
        ax.set_xlabel("variance (linear-predictor scale)")
        ax.set_title(f"Variance decomposition, {short(layer, 30)}")
        ax.grid(axis="y", visible=False)

    return Chart(
        "varcomp",
        "Variance decomposition",
        draw,
        height=0.6 + 0.22 * max(len(terms), 2),
        alt=f"Variance components of layer {layer}",
    )


MAX_CATERPILLAR = 60


def caterpillar(layer: str, kind: str, effects: Sequence[RandomEffect]) -> Chart:
    """Predicted effects with 95 % intervals, sorted; red when the whole interval costs yield.

    With more than MAX_CATERPILLAR levels the middle of the distribution is left out: an
    engineer looks at the extremes, and the page stays readable.
    """
    ordered = sorted(effects, key=lambda e: e.estimate)
    omitted = 0
    if len(ordered) > MAX_CATERPILLAR:
        half = MAX_CATERPILLAR // 2
        omitted = len(ordered) - 2 * half
        ordered = ordered[:half] + ordered[-half:]

    def draw(axes: Sequence[Axes]) -> None:
        ax = axes[0]
        est = np.array([e.estimate for e in ordered])
        half_width = Z95 * np.array([e.se for e in ordered])
        y = np.arange(len(ordered))
        worse = est + half_width < 0  # interval entirely below 0: costs yield
        better = est - half_width > 0
        for mask, colour in ((~worse & ~better, BLUE), (better, GREEN), (worse, RED)):
            ax.errorbar(
                est[mask],
                y[mask],
                xerr=half_width[mask],
                fmt="o",
                ms=2.8,
                color=colour,
                ecolor=colour,
                elinewidth=0.9,
                zorder=3,
            )
        ax.axvline(0, color=MUTED, lw=0.8)
        ax.set_yticks(y, [short(_effect_label(e), 30) for e in ordered])
        ax.tick_params(axis="y", labelsize=6 if len(ordered) > 25 else 7)
        ax.set_ylim(-0.8, len(ordered) - 0.2)
        ax.set_xlabel("effect on logit(yield); < 0 costs yield")
        note = f" ({omitted} middle levels not shown)" if omitted else ""
        ax.set_title(
            f"{kind.capitalize()} effects, {short(layer, 24)}, 95 % intervals "
            f"(red: below 0, green: above 0){note}"
        )
        ax.grid(axis="y", visible=False)

    return Chart(
        f"caterpillar-{kind}",
        f"{kind.capitalize()} effects",
        draw,
        height=0.7 + 0.14 * max(len(ordered), 4),
        alt=f"Caterpillar plot of {kind} effects in layer {layer}",
    )


def _effect_label(effect: RandomEffect) -> str:
    if effect.operation and effect.operation not in effect.level:
        return f"{effect.level} @ {effect.operation}"
    return effect.level


@dataclass(frozen=True)
class ToolYield:
    """Wafer yields (fraction) of the wafers one tool processed at one operation."""

    operation: str
    tool_id: str
    yields: np.ndarray


def yield_by_tool(layer: str, groups: Sequence[ToolYield]) -> Chart:
    """A variability chart: box and jittered points of wafer yield per tool, grouped by operation."""

    def draw(axes: Sequence[Axes]) -> None:
        ax = axes[0]
        rng = np.random.default_rng(0)  # jitter only; fixed so reports are reproducible
        positions, labels, data = [], [], []
        pos, previous_op = 0.0, None
        op_spans: list[tuple[str, float, float]] = []
        for g in groups:
            if g.operation != previous_op:
                if previous_op is not None:
                    pos += 0.8
                op_spans.append((g.operation, pos, pos))
                previous_op = g.operation
            positions.append(pos)
            labels.append(short(g.tool_id, 14))
            data.append(100 * g.yields)
            op_spans[-1] = (op_spans[-1][0], op_spans[-1][1], pos)
            pos += 1
        ax.boxplot(
            data,
            positions=positions,
            widths=0.6,
            showfliers=False,
            medianprops={"color": RED, "lw": 1.2},
            boxprops={"color": INK, "lw": 0.7},
            whiskerprops={"color": INK, "lw": 0.7},
            capprops={"color": INK, "lw": 0.7},
        )
        for p, d in zip(positions, data, strict=True):
            sample = d if len(d) <= 400 else rng.choice(d, 400, replace=False)
            ax.scatter(
                p + rng.uniform(-0.22, 0.22, len(sample)),
                sample,
                s=2,
                color=BLUE,
                alpha=0.35,
                lw=0,
                zorder=1,
                rasterized=True,
            )
        ax.set_xticks(positions, labels, rotation=45 if len(labels) > 10 else 0, ha="right")
        if len(labels) <= 10:
            ax.tick_params(axis="x", labelrotation=0)
            for t in ax.get_xticklabels():
                t.set_ha("center")
        ymin = min((float(np.min(d)) for d in data if len(d)), default=0.0)
        ax.set_ylim(max(0.0, ymin - 5), 101)
        for op, start, end in op_spans:
            ax.text(
                (start + end) / 2,
                1.0,
                short(op, 22),
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=6.5,
                color=MUTED,
            )
            if start > 0:
                ax.axvline(start - 0.9, color=MUTED, lw=0.6, ls=":")
        ax.set_ylabel("wafer yield (%)")
        ax.set_title(f"Yield by tool, {short(layer, 30)}", pad=12)
        ax.grid(axis="x", visible=False)

    return Chart(
        "yield-by-tool",
        "Yield by tool",
        draw,
        height=2.7,
        alt=f"Box plots of wafer yield by tool for layer {layer}",
    )


@dataclass(frozen=True)
class MetrologyYield:
    """Per-wafer mean of one inline parameter against that wafer's yield (fraction)."""

    param: str
    values: np.ndarray
    yields: np.ndarray


def metrology_vs_yield(layer: str, series: Sequence[MetrologyYield]) -> Chart:
    """Scatter of wafer yield against each parameter's wafer mean, with binned means."""

    def draw(axes: Sequence[Axes]) -> None:
        for ax, s in zip(axes, series, strict=True):
            ax.scatter(s.values, 100 * s.yields, s=3, color=BLUE, alpha=0.3, lw=0, rasterized=True)
            if len(s.values) >= 20:
                edges = np.quantile(s.values, np.linspace(0, 1, 11))
                idx = np.clip(np.searchsorted(edges, s.values, side="right") - 1, 0, 9)
                centres = [s.values[idx == k].mean() for k in range(10) if np.any(idx == k)]
                means = [100 * s.yields[idx == k].mean() for k in range(10) if np.any(idx == k)]
                ax.plot(centres, means, "-o", color=RED, lw=1.2, ms=2.5, label="decile means")
                ax.legend(loc="lower left")
            ax.set_xlabel(short(s.param, 26))
            ax.set_title(f"{short(s.param, 24)} (n={len(s.values)})")
        axes[0].set_ylabel("wafer yield (%)")

    return Chart(
        "metrology",
        "Metrology vs yield",
        draw,
        panels=max(len(series), 1),
        height=2.3,
        alt=f"Wafer yield against inline metrology for layer {layer}",
    )


def diagnostics(layer: str, fitted: np.ndarray, residuals: np.ndarray) -> Chart:
    """Residuals against fitted values (with a running mean) and a normal QQ plot."""

    def draw(axes: Sequence[Axes]) -> None:
        ax, qq = axes
        ax.scatter(fitted, residuals, s=3, color=BLUE, alpha=0.35, lw=0, rasterized=True)
        ax.axhline(0, color=MUTED, lw=0.8)
        if len(fitted) >= 30:
            order = np.argsort(fitted)
            k = max(len(fitted) // 20, 5)
            smooth = np.convolve(residuals[order], np.ones(k) / k, mode="valid")
            ax.plot(fitted[order][k // 2 : k // 2 + len(smooth)], smooth, color=RED, lw=1.2)
        ax.set_xlabel("fitted value")
        ax.set_ylabel("deviance residual")
        ax.set_title("Residuals vs fitted")
        (osm, osr), (slope, intercept, _) = stats.probplot(residuals, dist="norm")
        qq.scatter(osm, osr, s=3, color=BLUE, alpha=0.5, lw=0, rasterized=True)
        qq.plot(osm, slope * osm + intercept, color=RED, lw=1)
        qq.set_xlabel("normal quantile")
        qq.set_ylabel("ordered residual")
        qq.set_title("Normal QQ")

    return Chart(
        "diagnostics",
        "Model diagnostics",
        draw,
        panels=2,
        height=2.4,
        alt=f"Residuals against fitted values and normal QQ plot for layer {layer}",
    )


# ---- the index over runs ----------------------------------------------------------------


@dataclass(frozen=True)
class TrendSeries:
    label: str
    impacts: list[float | None]  # one per run, None where the layer was not ranked
    ci_low: list[float | None]
    ci_high: list[float | None]


def trend(run_labels: Sequence[str], series: Sequence[TrendSeries]) -> Chart:
    """Yield impact of the top layers across runs, oldest run first."""
    palette = ["#2f5f8a", "#b03a2e", "#d98b3a", "#3f8f5a", "#6f4e9b", "#5c6b73", "#9b4e7a"]

    def draw(axes: Sequence[Axes]) -> None:
        ax = axes[0]
        x = np.arange(len(run_labels))
        n = max(len(series), 1)
        for i, s in enumerate(series):
            colour = palette[i % len(palette)]
            offset = (i - (n - 1) / 2) * 0.06
            pts = [
                (xi + offset, v, lo, hi)
                for xi, v, lo, hi in zip(x, s.impacts, s.ci_low, s.ci_high, strict=True)
                if v is not None
            ]
            if not pts:
                continue
            px, pv, plo, phi = (np.array(c, dtype=float) for c in zip(*pts, strict=True))
            plo = np.where(np.isnan(plo), pv, plo)
            phi = np.where(np.isnan(phi), pv, phi)
            ax.errorbar(
                px,
                pv,
                yerr=[pv - plo, phi - pv],
                fmt="-o",
                ms=3,
                lw=1.1,
                capsize=2,
                color=colour,
                label=short(s.label, 20),
            )
        ax.axhline(0, color=MUTED, lw=0.8)
        step = max(1, math.ceil(len(x) / 12))  # at most about a dozen run labels
        ax.set_xticks(
            x[::step], [short(r, 18) for r in run_labels][::step], rotation=30 if len(x) > 5 else 0
        )
        ax.set_xlim(-0.5, len(x) - 0.5)
        ax.set_ylabel("yield impact (yield points)")
        ax.set_title("Top layers across runs, 95 % intervals")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))

    return Chart(
        "trend",
        "Top layers across runs",
        draw,
        height=2.8,
        alt="Yield impact of the top layers across runs",
    )
