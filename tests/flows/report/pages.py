"""Reading a built report in the tests: the HTML's parts, the ranked layers of a run."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from flows.analysis.results import AnalysisResult, Finding, LayerRanking


class Page(HTMLParser):
    """The parts of a page the tests read: tags, attributes, ids, text per section."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.ids: set[str] = set()
        self.headings: list[tuple[str, str]] = []
        self.section_text: dict[str, list[str]] = {}
        self._section: str | None = None
        self._heading: str | None = None
        self._text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "section":
            self._section = a.get("id")
        if tag in ("h2", "h3"):
            self._heading, self._text = tag, []

    def handle_endtag(self, tag: str) -> None:
        if tag == self._heading:
            self.headings.append((tag, "".join(self._text).strip()))
            self._heading = None

    def handle_data(self, data: str) -> None:
        if self._heading:
            self._text.append(data)
        if self._section:
            self.section_text.setdefault(self._section, []).append(data)

    def text(self, section: str) -> str:
        return re.sub(r"\s+", " ", " ".join(self.section_text.get(section, [])))


def ranked(result: AnalysisResult) -> list[LayerRanking]:
    return sorted((r for r in result.ranking if r.rank is not None), key=lambda r: r.rank)


def significant_in_order(result: AnalysisResult) -> list[Finding]:
    """The findings the summary must state, in its order, from the result alone: layers in
    rank order; within one, losses by size, then noisy equipment by adjusted p."""
    out = []
    for r in ranked(result):
        mine = [
            f
            for f in result.findings
            if f.layer == r.layer and f.p_adjusted is not None and f.p_adjusted < 0.05
        ]
        losses = [
            f for f in mine if f.effect in ("tool", "chamber", "metrology") and f.yield_impact > 0
        ]
        noisy = [f for f in mine if f.effect == "dispersion"]
        out += sorted(losses, key=lambda f: -f.yield_impact)
        out += sorted(noisy, key=lambda f: f.p_adjusted)
    return out
