-- The contract's comparison with the previous run on the same database: each finding of
-- either run, located as in `findings`, with its status `new`, `ongoing` or `resolved`.
CREATE TABLE IF NOT EXISTS finding_changes (
    run_id VARCHAR NOT NULL,
    previous_run_id VARCHAR,
    layer VARCHAR NOT NULL,
    effect VARCHAR NOT NULL,
    operation VARCHAR,
    tool_id VARCHAR,
    chamber_id VARCHAR,
    param VARCHAR,
    status VARCHAR NOT NULL CHECK (status IN ('new', 'ongoing', 'resolved'))
);
