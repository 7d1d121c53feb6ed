"""The warehouse: drops into DuckDB, checked against the data contract.

db.py             connecting to the DuckDB file, quoting, running the sql/ files
drop_files.py     a drop's files: find, hash, land each table (typed, with file and row)
stdf.py           STDF V4 wafer sort files (sort/) into the sort_die and bin_defs landing tables
contract.py       the contract read from expectations/, and the check's result types
contract_rules.py the contract as SQL rules over every row, plus cross-table rules
gx_suites.py      the Great Expectations suites on chunks or a sample, data docs
drop_checks.py    `check_drop`: SQL rules, then GX, one result
ingest.py         `ingest_drop`: land, check, merge in one transaction or quarantine
marts.py          build the model-frame marts (sql/marts/) and check their keys
console.py        what `yieldrank ingest` and `yieldrank status` print
"""
