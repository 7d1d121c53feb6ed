-- One row per analysis run; run_id ties together its ranking and findings.
CREATE TABLE IF NOT EXISTS analysis_runs (
    run_id VARCHAR NOT NULL,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    status VARCHAR,
    config JSON
);
