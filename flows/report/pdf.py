"""The PDF report: the HTML report's sections on A4 pages, by matplotlib alone.

Pure Python (matplotlib's PDF backend, no system library): text is laid out here in
blocks (headings, paragraphs, fact lists, table rows, charts) that flow onto pages,
table headers repeat after a page break, and each layer starts a new page. Charts are
the very PNGs the HTML embeds, placed at their physical size. Fonts are embedded as
TrueType so the text can be searched and extracted.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path

import numpy as np
from matplotlib import font_manager
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from PIL import Image

from flows.report.charts import INK, MUTED, ChartFailure, RenderedChart, printable, report_style
from flows.report.data import Unavailable
from flows.report.model import LotList, Rendered, ReportModel, Table, chart_problems, shown

PAGE_W, PAGE_H = 8.27, 11.69  # A4, inches
LEFT, RIGHT, TOP, BOTTOM = 0.55, 0.55, 0.6, 0.65
TEXT_W = PAGE_W - LEFT - RIGHT
CELL_PAD = 0.1  # inches of space between table columns
FLAG = "#fbeeec"
FAILED = "#8c2a20"  # the HTML report's --flag-ink
BAND = "#f3f5f7"
RULE = "#d5dbe0"
BODY = 7.5
SMALL = 6.5


@cache
def _advance(char: str) -> float:
    """Advance width of a glyph of the report's font, in em (kerning is ignored)."""
    font = font_manager.get_font(font_manager.findfont(font_manager.FontProperties()))
    font.set_size(10, 72)
    try:
        return font.load_char(ord(char)).linearHoriAdvance / 65536 / 10
    except (RuntimeError, ValueError):  # a control character or one the font cannot load
        return 0.6


def text_width(text: str, size: float, bold: bool = False) -> float:
    """Width of `text` in inches at `size` points (bold glyphs are about 10 % wider)."""
    return sum(_advance(c) for c in text) * size / 72 * (1.1 if bold else 1.0)


def wrap(text: str, width: float, size: float, bold: bool = False) -> list[str]:
    """Greedy line breaking at spaces to `width` inches; a word too long is cut where it must."""
    lines: list[str] = []
    line = ""
    for word in str(text).split():
        candidate = f"{line} {word}" if line else word
        if text_width(candidate, size, bold) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = ""
        for char in word:
            if line and text_width(line + char, size, bold) > width:
                lines.append(line)
                line = ""
            line += char
    if line:
        lines.append(line)
    return lines or [""]


def _line(size: float) -> float:
    return size * 1.35 / 72


# ---- blocks ---------------------------------------------------------------------------------


@dataclass
class Block:
    height: float
    keep_with_next: bool = False

    def draw(self, fig: Figure, top: float) -> None:
        """Spacers and page breaks draw nothing."""


@dataclass
class PageBreak(Block):
    height: float = 0.0


@dataclass
class Spacer(Block):
    pass


@dataclass
class Heading(Block):
    text: str = ""
    size: float = 12.0
    rule: bool = False

    def draw(self, fig: Figure, top: float) -> None:
        y = top + self.height - 0.08
        _text(fig, LEFT, y, self.text, self.size, weight="bold")
        if self.rule:
            _hline(fig, y + 0.05, INK, 1.2)


def heading(text: str, level: int) -> Heading:
    size = {1: 13.0, 2: 11.0, 3: 9.0, 4: 7.5}[level]
    lines = wrap(text, TEXT_W, size, bold=True)
    text = lines[0] if len(lines) == 1 else lines[0][:-1] + "…"
    return Heading(
        height=size * 2.1 / 72, keep_with_next=True, text=text, size=size, rule=level == 1
    )


@dataclass
class Paragraph(Block):
    lines: list[str] = field(default_factory=list)
    size: float = BODY
    colour: str = INK
    style: str = "normal"
    weight: str = "normal"
    indent: float = 0.0

    def draw(self, fig: Figure, top: float) -> None:
        for i, line in enumerate(self.lines):
            y = top + (i + 1) * _line(self.size)
            _text(
                fig,
                LEFT + self.indent,
                y,
                line,
                self.size,
                colour=self.colour,
                style=self.style,
                weight=self.weight,
            )


def paragraph(text: str, size: float = BODY, indent: float = 0.0, **style: str) -> Paragraph:
    lines = wrap(text, TEXT_W - indent, size, bold=style.get("weight") == "bold")
    return Paragraph(
        height=len(lines) * _line(size) + 0.05, lines=lines, size=size, indent=indent, **style
    )


def not_available(x: Unavailable) -> Paragraph:
    return paragraph(f"not available: {x.why}", colour=MUTED, style="italic")


def failed(text: str) -> Paragraph:
    """A chart that could not be drawn, or the report's list of them: not to be overlooked."""
    return paragraph(text, colour=FAILED)


@dataclass
class Fact(Block):
    key: str = ""
    lines: list[str] = field(default_factory=list)
    key_width: float = 1.6

    def draw(self, fig: Figure, top: float) -> None:
        _text(fig, LEFT, top + _line(BODY), self.key, BODY, colour=MUTED)
        for i, line in enumerate(self.lines):
            _text(fig, LEFT + self.key_width, top + (i + 1) * _line(BODY), line, BODY)


def facts(items: Sequence[tuple[str, str]]) -> list[Block]:
    width = min(max((text_width(k, BODY) for k, _ in items), default=1.0) + 0.2, 2.2)
    out: list[Block] = []
    for key, value in items:
        lines = wrap(value, TEXT_W - width, BODY)
        out.append(
            Fact(height=len(lines) * _line(BODY) + 0.02, key=key, lines=lines, key_width=width)
        )
    return out


@dataclass
class Row(Block):
    cells: list[list[str]] = field(default_factory=list)  # wrapped lines per cell
    widths: list[float] = field(default_factory=list)
    numeric: set[int] = field(default_factory=set)
    header: bool = False
    flagged: bool = False

    def draw(self, fig: Figure, top: float) -> None:
        if self.header or self.flagged:
            fig.add_artist(
                Rectangle(
                    (LEFT / PAGE_W, 1 - (top + self.height) / PAGE_H),
                    TEXT_W / PAGE_W,
                    self.height / PAGE_H,
                    transform=fig.transFigure,
                    facecolor=BAND if self.header else FLAG,
                    edgecolor="none",
                    zorder=0,
                )
            )
        x = LEFT
        for i, (lines, width) in enumerate(zip(self.cells, self.widths, strict=True)):
            right = i in self.numeric
            for j, line in enumerate(lines):
                _text(
                    fig,
                    x + (width - 0.05 if right else 0.04),
                    top + 0.03 + (j + 1) * _line(SMALL),
                    line,
                    SMALL,
                    weight="bold" if self.header else "normal",
                    ha="right" if right else "left",
                )
            x += width
        _hline(fig, top + self.height, "#b9c2c9" if self.header else RULE, 0.5)


@dataclass
class TableBlocks:
    header: Row
    rows: list[Row]


def table(t: Table) -> TableBlocks:
    widths = _column_widths(t)

    def row(cells: Sequence[str], header: bool = False, flagged: bool = False) -> Row:
        wrapped = [
            wrap(c, w - CELL_PAD, SMALL, bold=header) for c, w in zip(cells, widths, strict=True)
        ]
        height = max(len(c) for c in wrapped) * _line(SMALL) + 0.07
        return Row(
            height=height,
            cells=wrapped,
            widths=widths,
            numeric=t.numeric,
            header=header,
            flagged=flagged,
        )

    return TableBlocks(
        header=row(t.header, header=True),
        rows=[row(r, flagged=i in t.flagged) for i, r in enumerate(t.rows)],
    )


def _column_widths(t: Table) -> list[float]:
    """Natural widths; when they do not fit, the long columns share what the short ones leave.

    A header may wrap at its spaces, so its longest word counts, not its whole text.
    """
    natural = [
        max(
            [
                *(text_width(word, SMALL, bold=True) for word in t.header[i].split()),
                *(text_width(r[i], SMALL) for r in t.rows),
            ],
            default=0.0,
        )
        + CELL_PAD
        + 0.02
        for i in range(len(t.header))
    ]
    natural = [max(w, 0.3) for w in natural]
    if sum(natural) <= TEXT_W:
        return natural
    fair = TEXT_W / len(natural)
    short = [w for w in natural if w <= fair]
    long_total = sum(w for w in natural if w > fair)
    room = TEXT_W - sum(short)
    return [w if w <= fair else max(room * w / long_total, 0.35) for w in natural]


@dataclass
class Picture(Block):
    chart: RenderedChart | None = None

    def draw(self, fig: Figure, top: float) -> None:
        assert self.chart is not None
        width = self.chart.width_px / self.chart.dpi
        height = self.chart.height_px / self.chart.dpi
        ax = fig.add_axes(
            (LEFT / PAGE_W, 1 - (top + height) / PAGE_H, width / PAGE_W, height / PAGE_H)
        )
        ax.imshow(
            np.asarray(Image.open(io.BytesIO(self.chart.png)).convert("RGB")),
            interpolation="none",
            aspect="auto",
        )
        ax.set_axis_off()


def picture(chart: RenderedChart) -> Picture:
    scale = min(1.0, TEXT_W / (chart.width_px / chart.dpi))
    return Picture(height=chart.height_px / chart.dpi * scale + 0.08, chart=chart)


# ---- drawing helpers --------------------------------------------------------------------


def _text(
    fig: Figure,
    x: float,
    y: float,
    text: str,
    size: float,
    colour: str = INK,
    ha: str = "left",
    **font: str,
) -> None:
    """Text with its baseline y inches from the top of the page."""
    fig.text(
        x / PAGE_W,
        1 - y / PAGE_H,
        printable(text),
        fontsize=size,
        color=colour,
        ha=ha,
        va="baseline",
        **font,
    )


def _hline(fig: Figure, y: float, colour: str, width: float) -> None:
    fig.add_artist(
        Line2D(
            [LEFT / PAGE_W, (PAGE_W - RIGHT) / PAGE_W],
            [1 - y / PAGE_H] * 2,
            transform=fig.transFigure,
            color=colour,
            lw=width,
        )
    )


# ---- the document ---------------------------------------------------------------------------


def _story(model: ReportModel, rendered: Rendered) -> Iterator[Block | TableBlocks]:
    s = model.sections
    # a legend is printed under the first table that has it; the PDF cannot fold it away
    tables = partial(_table_or_na, legends_printed=set())
    yield Paragraph(height=0.3, lines=[f"Yield report, run {model.run_id}"], size=15, weight="bold")
    yield paragraph(f"created {model.created_at} · yieldrank {model.version}", colour=MUTED)
    problems = chart_problems(model, rendered)
    if problems:
        yield failed(
            f"This report is incomplete: {len(problems)} chart(s) could not be drawn. "
            "The analysis and every table are complete."
        )
        for problem in problems:
            yield failed(f"- {problem}")
    yield Spacer(0.1)

    yield heading(s["summary"], 1)
    if model.no_ranking_reason:
        yield paragraph(model.no_ranking_reason, colour=MUTED, style="italic")
    else:
        if model.sentences:
            yield paragraph(model.sentences_lead)
            for i, sentence in enumerate(model.sentences, 1):
                yield paragraph(f"{i}. {sentence.layer} {sentence.text}", size=8.5)
                if sentence.lots:
                    yield from _lots(sentence.lots, indent=0.2)
        else:
            yield paragraph("No finding of this run is significant.")
        for sentence in model.quiet:
            yield paragraph(f"- {sentence.layer}: {sentence.text}", size=8.5)
        yield paragraph(model.materiality, size=SMALL, colour=MUTED)
    yield heading("Data of this run", 3)
    yield from facts(model.data_facts)
    yield heading("Data quality", 3)
    yield paragraph(model.quality_outcome)
    yield heading("Ranking", 3)
    yield from tables(model.ranking)
    yield paragraph(
        "Highlighted rows: a significant loss. How each number is computed: Method.",
        size=SMALL,
        colour=MUTED,
    )

    yield heading(s["pareto"], 1)
    yield paragraph("In the ranking's order, as in the table above.", size=SMALL, colour=MUTED)
    yield from _chart(model.pareto, rendered)

    yield heading(s["sensitivity"], 1)
    yield paragraph(
        "Per operation: its test, given every other operation's equipment, and the smallest "
        'shift of one tool that this fab\'s data would detect, so that "no loss found" has a '
        "size.",
        size=SMALL,
        colour=MUTED,
    )
    yield from tables(model.operation_tests)

    yield PageBreak()
    yield heading(s["layers"], 1)
    if not model.layers:
        yield paragraph("no ranked layer", colour=MUTED, style="italic")
    for n, layer in enumerate(model.layers):
        if n:
            yield PageBreak()
        yield heading(f"{layer.rank}. {layer.name}", 2)
        yield paragraph(layer.headline, weight="bold")
        yield from facts(layer.facts)
        yield heading("Findings", 4)
        yield from tables(layer.findings)
        if layer.lot_lists:
            yield heading("Lots of each finding", 4)
            for lots in layer.lot_lists:
                yield from _lots(lots)
        yield heading("Metrology: what moves it", 4)
        yield from tables(layer.chains)
        yield heading("Equipment at other operations sharing the findings' lots", 4)
        yield from tables(layer.aliases)
        yield heading("Noisy equipment (dispersion findings)", 4)
        yield from tables(layer.dispersion)
        for chart in layer.charts:
            yield from _chart(chart, rendered)
        yield heading("Estimates on the models' own scales", 4)
        yield from tables(layer.estimates)

    yield PageBreak()
    yield heading(s["unranked"], 1)
    if model.unranked:
        yield table(model.unranked)
    else:
        yield paragraph("Every layer of the run was ranked.")

    yield heading(s["quality"], 1)
    yield paragraph(model.quality_outcome)
    yield heading("Drops", 3)
    yield from tables(model.drops)
    if model.problems:
        yield heading("Rules broken", 3)
        yield table(model.problems)
    yield heading("Great Expectations results", 3)
    yield from tables(model.expectations)
    if model.failed_expectations:
        yield heading("Failing expectations", 3)
        yield table(model.failed_expectations)
    if model.data_docs:
        yield paragraph(f"Great Expectations data docs: {model.data_docs}")
    else:
        yield not_available(Unavailable("no Great Expectations data docs beside this report"))

    yield heading(s["method"], 1)
    yield heading("Yield impact", 3)
    yield paragraph(model.impact_definition.replace("**", ""))
    yield heading("Models and methods", 3)
    yield from facts(model.method)
    if model.chained:
        yield heading("Chained model across layers", 3)
        yield paragraph(
            "Final yield on every layer's tool, chamber and metrology terms in one model, so "
            "that lots sharing tools across layers do not count an effect twice.",
            colour=MUTED,
        )
        yield from facts(model.chained.facts)
        yield from tables(model.chained.effects)
    for layer in model.layers:
        yield heading(f"Model of layer {layer.name}", 3)
        yield from facts(layer.model_facts)
        yield heading("Fixed effects of the yield model", 4)
        yield from tables(layer.fixed_effects)
        yield heading("Process models", 4)
        yield from tables(layer.process_models)
    yield heading("Versions", 3)
    yield table(model.versions)


def _lots(lots: LotList, indent: float = 0.0) -> Iterator[Block]:
    """A finding's lots: the PDF cannot fold them away, so they are printed small."""
    n = len(lots.lots)
    yield paragraph(
        f"{n} lot{'s' if n != 1 else ''} of {lots.label}: {', '.join(lots.lots)}",
        size=SMALL,
        colour=MUTED,
        indent=indent,
    )


def _chart(chart: object, rendered: Rendered) -> Iterator[Block]:
    shows = shown(rendered)(chart)  # type: ignore[arg-type]
    if isinstance(shows, Unavailable):
        yield not_available(shows)
    elif isinstance(shows, ChartFailure):
        yield failed(shows.note)
    else:
        yield picture(shows)


def _table_or_na(
    t: Table | Unavailable, legends_printed: set[tuple[tuple[str, str], ...]] | None = None
) -> Iterator[Block | TableBlocks]:
    """A table, its note and its legend (only the first time that legend is met, when
    `legends_printed` keeps track)."""
    if isinstance(t, Unavailable):
        yield not_available(t)
        return
    yield table(t)
    if t.note:
        yield paragraph(t.note, size=SMALL, colour=MUTED)
    legend = tuple(t.legend)
    if not legend:
        return
    if legends_printed is not None and legend in legends_printed:
        yield paragraph(
            "Columns as explained under the first table like it.", size=SMALL, colour=MUTED
        )
        return
    if legends_printed is not None:
        legends_printed.add(legend)
    for key, meaning in legend:
        yield paragraph(f"{key}: {meaning}", size=SMALL, colour=MUTED)


def paginate(story: Sequence[Block | TableBlocks]) -> list[list[tuple[float, Block]]]:
    """Place blocks on pages: (top in inches, block). Headings stay with what follows them."""
    usable = PAGE_H - TOP - BOTTOM
    flat: list[tuple[Block, Row | None]] = []  # block, the header to repeat before it
    for item in story:
        if isinstance(item, TableBlocks):
            item.header.keep_with_next = True
            flat.append((item.header, None))
            flat.extend((r, item.header) for r in item.rows)
            flat.append((Spacer(0.1), None))
        else:
            flat.append((item, None))

    pages: list[list[tuple[float, Block]]] = [[]]
    y = 0.0
    i = 0
    while i < len(flat):
        block, header = flat[i]
        if isinstance(block, PageBreak):
            if pages[-1]:
                pages.append([])
                y = 0.0
            i += 1
            continue
        # A heading (or table header) and what it introduces move to the next page together.
        need = block.height
        j = i
        while flat[j][0].keep_with_next and j + 1 < len(flat):
            j += 1
            need += flat[j][0].height
        if y + need > usable and pages[-1]:
            pages.append([])
            y = 0.0
            if header is not None and flat[i - 1][0] is not header:
                pages[-1].append((TOP, header))
                y += header.height
        pages[-1].append((TOP + y, block))
        y += block.height
        i += 1
    return pages


def write_pdf(model: ReportModel, rendered: Rendered, path: str | Path) -> Path:
    path = Path(path)
    with report_style():  # text widths are measured with the glyphs of the report's font
        pages = paginate(list(_story(model, rendered)))
    with report_style(), PdfPages(path) as pdf:
        info = pdf.infodict()
        info["Title"] = f"Yield report {model.run_id}"
        info["Creator"] = f"yieldrank {model.version}"
        for n, page in enumerate(pages, 1):
            fig = Figure(figsize=(PAGE_W, PAGE_H))
            for top, block in page:
                block.draw(fig, top)
            _text(
                fig,
                LEFT,
                PAGE_H - BOTTOM / 2,
                f"yieldrank · run {model.run_id}",
                SMALL,
                colour=MUTED,
            )
            _text(
                fig,
                PAGE_W - RIGHT,
                PAGE_H - BOTTOM / 2,
                f"page {n} of {len(pages)}",
                SMALL,
                colour=MUTED,
                ha="right",
            )
            pdf.savefig(fig)
    return path
