"""The HTML rendering of a `ReportModel`: Jinja2 templates from `reports/templates/`,
autoescaped, the CSS inlined, the charts as base64 PNG, no script.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import jinja2
from markupsafe import Markup, escape

from flows.report.charts import (
    Chart,
    ChartFailure,
    render_or_note,
)
from flows.report.data import Unavailable
from flows.report.model import ChartSlot, Rendered, ReportModel, Table, chart_problems, shown
from flows.resources import reports_dir

# ---- HTML ---------------------------------------------------------------------------------


@cache
def template_environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(reports_dir() / "templates"),
        autoescape=True,  # every template, whatever its extension: all data is text
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["bold_markdown"] = bold_markdown
    env.tests["unavailable"] = lambda x: isinstance(x, Unavailable)
    env.tests["chart_failure"] = lambda x: isinstance(x, ChartFailure)
    env.tests["table"] = lambda x: isinstance(x, Table)
    return env


def bold_markdown(text: str) -> Markup:
    """Escape `text`, then turn its `**bold**` spans into <strong> (the only markup allowed)."""
    escaped = str(escape(text))
    return Markup(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped))


def inline_css() -> Markup:
    # Our own static file, inlined so the report is one self-contained page.
    return Markup((reports_dir() / "static" / "report.css").read_text(encoding="utf-8"))


def render_charts(charts: Iterable[ChartSlot]) -> Rendered:
    """Each chart rendered once (keyed by id: the model keeps the charts alive meanwhile); a
    chart that raises is kept as its `ChartFailure`, which both outputs print in its place."""
    return {id(c): render_or_note(c) for c in charts if isinstance(c, Chart)}


def render_html(model: ReportModel, rendered: Rendered) -> str:
    template = template_environment().get_template("report.html.j2")
    return template.render(
        m=model,
        css=inline_css(),
        png=shown(rendered),
        missing_charts=chart_problems(model, rendered),
    )


def write_atomically(path: Path, data: bytes) -> None:
    # A reader (a browser, the index) never sees half a report.
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
