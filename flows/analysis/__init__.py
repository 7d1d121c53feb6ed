"""Per-layer HGLMs, the ranking of sub-processes by yield impact, and what is written back.

frames.py       model frames (Arrow) from the marts in DuckDB
layers.py       per-layer yield, process and chained HGLMs (`hglm.fit`)
ranking.py      yield impact, intervals, p-values, findings; writing the results
results.py      the records a run produces (`AnalysisResult`, `LayerFit`, ...)
run.py          `run_analysis`: all of it, sequentially (the CLI's `yieldrank analyse`)
power_study.py  the statistical validation on simulated fabs (`make validate`)
power_table.py  its criteria table (issue 14's "Done when", per fab size)
power_study.py  the ranking's statistical validation on simulated fabs (`make validate`)
die_geometry.py the contract's die radius, zone and quadrant (as `marts.die_position`)
signatures.py   a spatial signature class per wafer (`wafer_signatures`)
defects.py      D0 and alpha: the negative binomial HGLM of defect fails per wafer and zone
"""
