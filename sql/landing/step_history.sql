-- One drop's processing history as delivered (see landing/lots.sql for the shared columns).
CREATE TEMP TABLE IF NOT EXISTS landing_step_history (
    drop_id VARCHAR NOT NULL,
    source_file VARCHAR NOT NULL,
    source_row BIGINT NOT NULL,
    wafer_id VARCHAR,
    step_seq BIGINT,
    operation VARCHAR,
    layer VARCHAR,
    tool_id VARCHAR,
    chamber_id VARCHAR,
    recipe VARCHAR,
    track_in_ts TIMESTAMP,
    track_out_ts TIMESTAMP,
    extra JSON,
    bad_cast VARCHAR[]
);
