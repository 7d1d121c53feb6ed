"""The run report engineers review: one `ReportModel`, rendered as HTML and as PDF.

    data.py          what the report reads from the run's DuckDB database (drops, GX runs)
    charts.py        the charts (matplotlib), each a `Chart` that draws itself
    model.py         the model both renderers read, and its number formatting
    attribution.py   the findings in words: the summary's sentences, "no loss found"
    finding_tables.py the ranking, findings and operation-test tables, with their legends
    assemble.py      `assemble`: an `AnalysisResult` (+ database) into a `ReportModel`
    data_sections.py the sections on the data, its checks and the method
    html.py          HTML from the Jinja2 templates in reports/templates/
    pdf.py           the PDF of the same model (matplotlib only)
    build.py         `build_report`: both files of one run
    index.py         `build_index`: the page over all runs

Imports run one way: data, charts -> model -> attribution -> finding_tables -> assemble,
data_sections -> html, pdf -> build;
index uses html.
"""
