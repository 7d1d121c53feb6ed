-- Every row of a rejected drop exactly as delivered (all values as text, JSON), with the
-- rules that row broke; rows that broke none were rejected with their drop (rules = []).
-- In row-level quarantine mode only the offending rows are kept here.
CREATE TABLE IF NOT EXISTS quarantine.rows (
    attempt_id BIGINT NOT NULL,
    drop_id VARCHAR NOT NULL,
    table_name VARCHAR NOT NULL,
    source_file VARCHAR NOT NULL,
    source_row BIGINT NOT NULL,
    rules VARCHAR[] NOT NULL,
    row_json JSON NOT NULL
);
