"""Prefect orchestration of the yield job: thin flows over the plain pipeline functions.

prefect_flows.py  the flows: yield_run = ingest_drops_flow -> analyse_flow -> report_flow
tasks.py          the tasks (each over one plain function), run records, artifacts
locking.py        one writer per DuckDB file (`hold_database`)
caching.py        fit cache keys on the content of the model frame
task_runners.py   threads or an existing Dask cluster
progress.py       progress events for the CLI
"""
