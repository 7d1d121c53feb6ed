-- One row per expectation of each Great Expectations suite run on an ingest attempt, written
-- in the transaction of that attempt's drop_log row (merged or rejected alike). One suite per
-- contract table: suite = table_name. GX sees rows_checked of the table's rows_total rows: all
-- of them up to the ingest's cap, else a systematic sample spread over the table (every k-th
-- row of each file) plus the rows the SQL rules flagged; the counts are over the rows it saw,
-- summed over the chunks it was fed. Uniqueness needs the whole drop, which no chunk sees:
-- those expectations are answered by the SQL rule over every row (evaluated_by = 'sql',
-- rows_checked = rows_total). Counts are NULL for expectations on the table's shape (column
-- exists, dtype). column_names and partial_unexpected (up to 20 offending values) are JSON.
CREATE TABLE IF NOT EXISTS meta.gx_results (
    attempt_id BIGINT NOT NULL,
    drop_id VARCHAR NOT NULL,
    table_name VARCHAR NOT NULL,
    suite VARCHAR NOT NULL,
    expectation_index INTEGER NOT NULL,
    expectation_type VARCHAR NOT NULL,
    column_names JSON NOT NULL,
    rule VARCHAR,
    success BOOLEAN NOT NULL,
    element_count BIGINT,
    unexpected_count BIGINT,
    unexpected_percent DOUBLE,
    partial_unexpected JSON NOT NULL,
    exception_message VARCHAR,
    rows_checked BIGINT NOT NULL,
    rows_total BIGINT NOT NULL,
    evaluated_by VARCHAR NOT NULL DEFAULT 'gx'
);
-- databases made before evaluated_by existed: every row of theirs was GX's own
ALTER TABLE meta.gx_results ADD COLUMN IF NOT EXISTS evaluated_by VARCHAR DEFAULT 'gx';
