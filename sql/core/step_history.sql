-- One row per wafer per processing step; (wafer_id, step_seq) is unique. Timestamps are UTC.
CREATE TABLE IF NOT EXISTS core.step_history (
    wafer_id VARCHAR NOT NULL,
    step_seq BIGINT NOT NULL,
    operation VARCHAR NOT NULL,
    layer VARCHAR NOT NULL,
    tool_id VARCHAR NOT NULL,
    chamber_id VARCHAR,
    recipe VARCHAR,
    track_in_ts TIMESTAMP NOT NULL,
    track_out_ts TIMESTAMP NOT NULL,
    drop_id VARCHAR NOT NULL,
    source_file VARCHAR NOT NULL,
    extra JSON
);
