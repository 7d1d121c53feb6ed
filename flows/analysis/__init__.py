"""Per-layer HGLMs, the ranking of sub-processes by yield impact, and what is written back.

frames.py       model frames (Arrow) from the marts in DuckDB
layers.py       per-layer yield, process and chained HGLMs (`hglm.fit`)
ranking.py      yield impact, intervals, p-values, findings; writing the results
results.py      the records a run produces (`AnalysisResult`, `LayerFit`, ...)
run.py          `run_analysis`: all of it, sequentially (the CLI's `yieldrank analyse`)
power_study.py  the statistical validation on simulated fabs (`make validate`)
power_table.py  its criteria table (issue 14's "Done when", per fab size)
"""
