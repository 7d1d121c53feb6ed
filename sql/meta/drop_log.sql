-- One row per attempt to ingest a drop. drop_id is stable for a drop's content
-- (folder name + content hash), so a re-delivery finds its earlier attempts.
-- status: merged | already_merged | rejected. files/row_counts/problems are JSON.
CREATE TABLE IF NOT EXISTS meta.drop_log (
    attempt_id BIGINT NOT NULL,
    drop_id VARCHAR NOT NULL,
    drop_path VARCHAR NOT NULL,
    content_hash VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    files JSON NOT NULL,
    row_counts JSON NOT NULL,
    problems JSON NOT NULL,
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP NOT NULL,
    seconds DOUBLE NOT NULL,
    timings JSON NOT NULL
);
