"""The report reads like an engineer's summary (issue 14, item 8).

Each significant finding has its sentence in the summary, with its numbers, in the ranking's
order; no cost is ever negative; the chart and the table show the layers in one order; every
column has a legend; each finding's lots fold away in a <details>; per operation the report
says what the data could have seen; the statistics' jargon stays under Method. The sentences
are checked against the run's findings (the result object the report was built from), and the
PDF is read page by page for the same text.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from html import unescape
from html.parser import HTMLParser

from pypdf import PdfReader

from flows.analysis.results import AnalysisResult, Finding, LayerRanking
from flows.report.assemble import assemble
from flows.report.attribution import common_model, finding_sentence, fmt_points, sentences_lead
from flows.report.build import build_report
from flows.report.data import Unavailable
from flows.report.finding_tables import chains_table
from flows.report.model import Table, fmt_num, fmt_p, fmt_pp
from tests.flows import report_sample as sample
from tests.flows.report.pages import Page, ranked, significant_in_order

NEGATIVE_NUMBER = re.compile(r"(?<![\w.–-])[-−]\s?\d")  # "-0.64", "− 1.2"; not "2026-09" or "L-3"


class Elements(HTMLParser):
    """The text of every element with a given tag and class, in document order (nesting of
    the same tag is not supported: the report does not nest these)."""

    def __init__(self, html: str, tag: str, cls: str | None = None, inside: str | None = None):
        super().__init__(convert_charrefs=True)
        self.tag, self.cls, self.inside = tag, cls, inside
        self.items: list[str] = []
        self._open = False
        self._within = inside is None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if self.inside and a.get("id") == self.inside:
            self._within = True
        if (
            self._within
            and tag == self.tag
            and (self.cls is None or self.cls in (a.get("class") or ""))
        ):
            self._open = True
            self.items.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == self.tag and self._open:
            self._open = False
        if tag == "section" and self.inside and self._within:
            self._within = False

    def handle_data(self, data: str) -> None:
        if self._open:
            self.items[-1] += data


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def summary_items(html: str) -> list[str]:
    """The summary's numbered sentences (each with its folded lot list)."""
    headline = html[
        html.index('<ol class="headline">') : html.index(
            "</ol>", html.index('<ol class="headline">')
        )
    ]
    return [squash(unescape(re.sub(r"<[^>]+>", " ", li))) for li in headline.split("<li>")[1:]]


def expected_numbers(f: Finding) -> list[str]:
    """What the sentence of `f` must print, formatted as the report formats it."""
    p = fmt_p(f.p_adjusted)
    numbers = [f.layer, p if p.startswith("<") else f"= {p}"]
    if f.effect == "dispersion":
        return [*numbers, f"x{fmt_num(math.exp(f.estimate / 2), 3)}", f.param, f.tool_id]
    numbers += [fmt_pp(f.yield_impact), f"{fmt_pp(max(f.ci_low, 0))} to {fmt_pp(f.ci_high)}"]
    numbers.append("material" if f.material else "below the materiality threshold")
    if f.effect == "metrology":
        numbers.append(f.param)
        if f.cause:
            c = f.cause
            numbers += [c["tool_id"], c["operation"], f"by {fmt_num(abs(c['shift']), 3)} nm"]
            numbers += [f"{fmt_num(abs(c['shift_sigma']), 2)} sigma", fmt_pp(c["yield_impact"])]
        return numbers
    numbers += [f.tool_id, f.operation]
    if f.chamber_id:
        numbers.append(f"chamber {f.chamber_id}")
    if f.loss_on_wafers:
        numbers.append(
            f"{fmt_points(f.loss_on_wafers)} points lower yield on its {f.n_wafers:,} wafers"
        )
        numbers.append(f"({f.n_lots} lots)")
    me = f"{f.tool_id}:{f.chamber_id}" if f.chamber_id else f.tool_id
    for alias in f.aliases:
        numbers += [alias["tool_id"], alias["operation"], f"{alias['shared_lots']} lots shared"]
        numbers.append(f"overlap {alias['overlap']:.2f}")
        numbers.append(f"{alias['tool_id']}'s given {me} is {fmt_pp(alias['yield_impact'])}")
    return numbers


def test_each_significant_finding_has_its_sentence_with_its_numbers_in_the_ranking_order(run):
    result, _, html = run
    expected = significant_in_order(result)
    assert len(expected) >= 4, "the sample should have tool, chamber, metrology and noisy findings"
    assert {f.effect for f in expected} == {"tool", "chamber", "metrology", "dispersion"}
    items = summary_items(html)
    assert len(items) == len(expected)
    for f, text in zip(expected, items, strict=True):
        for number in expected_numbers(f):
            assert number in text, f"{number!r} not in the sentence {text!r}"
    # which model a number comes from, where it is not the chained model
    noisy = next(t for f, t in zip(expected, items, strict=True) if f.effect == "dispersion")
    assert "(numbers from the parameter's process model)" in noisy
    assert all(
        "numbers from" not in t
        for f, t in zip(expected, items, strict=True)
        if f.model == "chained"
    )
    # the lots of a finding fold away under its sentence
    for f, text in zip(expected, items, strict=True):
        if f.lots:
            assert f"{len(f.lots)} lots of" in text and ", ".join(f.lots) in text


def test_layers_without_a_significant_loss_say_so_and_no_cost_is_negative(run):
    result, _, html = run
    summary = Page(html).text("summary")
    quiet = [r for r in ranked(result) if not r.significant]
    assert quiet, "the sample should have layers without a loss"
    quiet_items = Elements(html, "li", inside="summary").items
    for r in quiet:
        line = next(squash(t) for t in quiet_items if squash(t).startswith(r.layer + ": "))
        assert "no loss found" in line and f"= {fmt_p(r.p_value)}" in line
    assert "materiality threshold" in summary and f"{fmt_pp(sample.MATERIALITY)} points" in summary
    assert not NEGATIVE_NUMBER.search(summary), NEGATIVE_NUMBER.search(summary)


def test_a_run_from_before_the_attribution_never_shows_a_negative_cost(run, tmp_path):
    # The demo's GATE: a layer impact of -0.64 from the model of that time.
    today = AnalysisResult.from_json(run[1] / "analysis.json")
    order = ranked(today)[:2]
    negative = replace(order[1], yield_impact=-0.64, ci_low=-2.67, ci_high=2.0, p_value=0.015)
    today.ranking = [order[0], negative]
    today.findings = [f for f in today.findings if f.layer in {order[0].layer, negative.layer}]
    today.layers = [f for f in today.layers if f.layer in {order[0].layer, negative.layer}]
    html = build_report(today, tmp_path / "today").html.read_text()
    summary = Page(html).text("summary")
    assert f"{negative.layer} : no loss found" in summary
    assert "0.00 to 2.00" in summary  # its interval, not below zero
    assert not NEGATIVE_NUMBER.search(summary), NEGATIVE_NUMBER.search(summary)
    # the adjusted p of each finding is computed by the report, and it says so
    assert "the report adjusted the recorded ones" in Page(html).text("method")


def test_the_chart_shows_the_layers_in_the_order_of_the_table(run):
    result, _, html = run
    page = Page(html)
    rows = re.findall(
        r"<tr[^>]*><td class=\"num\">(\d+)</td><td>(.*?)</td>", html.split('id="pareto"')[0]
    )
    table_order = [name for _, name in rows]
    assert [int(rank) for rank, _ in rows] == list(range(1, len(rows) + 1))
    assert table_order == [
        r.layer.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        for r in ranked(result)
    ]
    alt = next(
        a["alt"] for tag, a in page.tags if tag == "img" and "Pareto" in (a.get("alt") or "")
    )
    assert alt.split("left to right: ", 1)[1] == ", ".join(r.layer for r in ranked(result))
    # significant layers first, by loss; then the others, each at "no loss found"
    losses = [r.yield_impact for r in ranked(result) if r.significant]
    assert losses == sorted(losses, reverse=True) and len(losses) >= 2
    assert all(r.yield_impact == 0 for r in ranked(result)[len(losses) :])


def test_the_chart_follows_the_ranking_even_where_it_is_not_by_size(run, tmp_path):
    # Whatever order the analysis ranks in, the chart shows that order (the demo's chart was
    # re-sorted by size and disagreed with its table).
    today = AnalysisResult.from_json(run[1] / "analysis.json")
    first, second = ranked(today)[:2]
    today.ranking = [
        replace(first, yield_impact=0.4, ci_low=0.2, ci_high=0.6, p_value=0.001),
        replace(second, yield_impact=1.5, ci_low=1.0, ci_high=2.0, p_value=0.002),
    ]
    today.layers = [f for f in today.layers if f.layer in {first.layer, second.layer}]
    html = build_report(today, tmp_path / "order").html.read_text()
    alt = next(a["alt"] for tag, a in Page(html).tags if tag == "img" and "Pareto" in a["alt"])
    assert alt.endswith(f"left to right: {first.layer}, {second.layer}")


def test_every_column_of_every_table_has_its_legend(run, tmp_path):
    result, _, html = run
    model = assemble(result, tmp_path)
    tables = [model.ranking, model.operation_tests]
    for layer in model.layers:
        tables += [layer.findings, layer.dispersion, layer.aliases, layer.chains, layer.estimates]
    tables = [t for t in tables if isinstance(t, Table)]
    with_findings = sum(isinstance(layer.findings, Table) for layer in model.layers)
    assert with_findings >= 2 and len(tables) >= 2 + 2 * with_findings
    for table in tables:
        explained = [key for key, _ in table.legend]
        assert explained[: len(table.header)] == table.header, table.header
        assert all(meaning for _, meaning in table.legend)
    units = {key for t in tables for key, _ in t.legend}
    assert {"log-odds (logit)", "standardised slope", "log variance ratio (log-phi ratio)"} <= units
    # in the HTML the ranking's legend is open, the others fold away
    legends = re.findall(r'<details class="legend"( open)?>', html)
    assert legends[0] == " open" and legends.count(" open") == 1 and len(legends) >= len(tables)


def test_each_findings_lots_fold_away_in_a_details_element(run):
    result, _, html = run
    layers = Page(html).text("layers")
    lot_lists = Elements(html, "details", "lots").items
    with_lots = [
        f for f in result.findings if f.lots and f.layer in {r.layer for r in ranked(result)}
    ]
    assert with_lots
    for f in significant_in_order(result):
        if f.lots:
            assert any(", ".join(f.lots) in squash(d) for d in lot_lists)
    for f in with_lots:
        if f.p_adjusted is not None and f.p_adjusted < 0.05:
            assert ", ".join(f.lots) in layers
    assert "<details" in html and "<script" not in html.lower()
    assert re.search(r'<details class="lots"><summary>\d+ lots? of ', html)


def test_what_the_data_can_see_per_operation(run):
    result, _, html = run
    seen = Page(html).text("sensitivity")
    assert len(result.operation_tests) > 5
    for t in result.operation_tests:
        shift = fmt_pp(t.detectable_shift) if t.detectable_shift is not None else "–"
        row = f"{t.operation} "
        assert row in seen
        assert f"{fmt_p(t.p_value)} {fmt_p(t.p_adjusted)} {shift}" in seen
    summary = Page(html).text("summary")
    quiet = next(r for r in ranked(result) if not r.significant)
    assert re.search(
        rf"{re.escape(quiet.layer)} : no loss found .*would detect a tool shift of [\d.]+", summary
    )


def test_statistics_jargon_is_only_under_method(run):
    _, _, html = run
    page = Page(html)
    jargon = ("cAIC", "EQL", "Holm", "chi-bar", "HL(1,1)", "REML")
    for section in ("summary", "pareto", "sensitivity", "layers"):
        text = page.text(section)
        assert not [word for word in jargon if word in text], section
    method = page.text("method")
    assert "cAIC" in method and "Holm" in method


def test_the_pdf_has_the_same_sentences_in_the_same_order(run):
    result, out, _ = run
    texts = [p.extract_text() for p in PdfReader(out / "report.pdf").pages]
    pdf = squash(" ".join(texts))
    at = 0
    for i, f in enumerate(significant_in_order(result), 1):
        start = pdf.index(f"{i}. {f.layer} ", at)
        for number in expected_numbers(f):
            assert number in pdf[start : start + 900], (number, pdf[start : start + 900])
        at = start
    assert "What the data can see" in pdf and "no loss found" in pdf
    for f in significant_in_order(result):
        if f.lots:
            assert f"{len(f.lots)} lots of" in pdf and ", ".join(f.lots[:3]) in pdf
    assert "loss (points of fab yield):" in pdf  # the ranking's legend
    summary_page = next(t for t in texts if "What costs yield" in t)
    assert not NEGATIVE_NUMBER.search(squash(summary_page.split("Data of this run")[0]))


def _layer(result: AnalysisResult, name: str) -> LayerRanking:
    return next(r for r in result.ranking if r.layer == name)


def test_a_run_without_findings_or_tests_still_reads(run, tmp_path):
    result, _, _ = run
    model = assemble(
        AnalysisResult(
            run_id="r-thin",
            created_at="2026-11-01T00:00:00+00:00",
            ranking=[_layer(result, ranked(result)[0].layer)],
            findings=[],
            layers=[],
        ),
        tmp_path,
    )
    assert model.sentences == [] and isinstance(model.operation_tests, Unavailable)
    assert "predates" in model.operation_tests.why
    threshold = getattr(AnalysisResult("r", "t", [], [], []), "materiality", None)
    if threshold is None:  # today's AnalysisResult has none; the attribution's a default
        assert "no materiality threshold" in model.materiality
    else:
        assert f"{fmt_pp(threshold)} points of fab yield" in model.materiality


def test_the_model_behind_the_numbers_is_named_once_and_where_a_sentence_differs():
    # As the attribution writes them: losses from each operation's fit given the chained
    # model, a noisy chamber from its parameter's process model.
    loss = sample.AttributedFinding(
        "L", "chamber", -0.3, 0.51, 0.30, 0.70, 1e-4, "CT_ETCH", "ETCH07", "CH3",
        p_adjusted=0.002, material=True, loss_on_wafers=4.8, n_wafers=128, n_lots=10,
        model="operation test",
    )  # fmt: skip
    noisy = sample.AttributedFinding(
        "L", "dispersion", math.log(1.97**2), math.nan, math.nan, math.nan, 1e-4, "M1_ETCH",
        "ETCH11", "CH2", "M1_THK", p_adjusted=0.01, model="process model",
    )  # fmt: skip
    said = common_model([loss, loss, noisy])
    assert said == "operation test"
    assert sentences_lead(said).endswith(
        "(numbers from the fit of its operation given the chained model unless a sentence "
        "says otherwise):"
    )
    text = finding_sentence(loss, loss.p_adjusted, "a", said).text
    assert text == (
        "ETCH07 chamber CH3 at CT_ETCH: 4.8 points lower yield on its 128 wafers (10 lots), "
        "costing 0.51 points of fab yield (95 % interval 0.30 to 0.70); adjusted p = 0.0020; "
        "material."
    )
    text = finding_sentence(noisy, noisy.p_adjusted, "a", said).text
    assert text == (
        "chamber ETCH11:CH2 at M1_ETCH: site-to-site SD x1.97 of its peers' on M1_THK; "
        "adjusted p = 0.010 (numbers from the parameter's process model)."
    )
    assert common_model([replace(loss, model="chained")]) is None  # the chained model: unsaid


def test_a_metrology_chain_in_the_parameters_own_units():
    # The process models' cause: unit_note says how the shift was measured, not a unit.
    note = (
        "GATE_OX_THK in its measured units: the wafers of FURN04 against the typical tool at "
        "GATE_OX; sigma = SD of the 410 measured wafer means"
    )
    cause = {
        "operation": "GATE_OX", "tool_id": "FURN04", "chamber_id": None, "shift": 0.045,
        "shift_low": 0.03, "shift_high": 0.06, "shift_sigma": 1.5, "sigma": 0.03,
        "unit_note": note, "yield_impact": 0.9,
    }  # fmt: skip
    f = sample.AttributedFinding(
        "GATE", "metrology", -0.2, 0.9, 0.55, 1.3, 1e-5, "GATE_OX", param="GATE_OX_THK",
        p_adjusted=0.001, material=True, model="chained", cause=cause,
    )  # fmt: skip
    text = finding_sentence(f, f.p_adjusted, "a").text
    assert text == (
        "FURN04 at GATE_OX raises GATE_OX_THK by 0.045 (in its own units; 1.5 sigma; 95 % "
        "interval 0.03 to 0.06), which costs 0.90 points of fab yield (95 % interval 0.55 to "
        "1.30); adjusted p = 0.0010; material."
    )
    lowered = finding_sentence(
        replace(f, cause={**cause, "shift": -0.045, "shift_low": -0.06, "shift_high": -0.03}),
        f.p_adjusted,
        "a",
    ).text
    assert (
        "lowers GATE_OX_THK by 0.045 (in its own units; 1.5 sigma; 95 % interval 0.03 to 0.06)"
        in lowered
    )
    table = chains_table([f])
    assert table.rows == [
        ["GATE_OX_THK", "FURN04 at GATE_OX", "0.045", "0.03 to 0.06", "1.5", "0.90", note]
    ]
