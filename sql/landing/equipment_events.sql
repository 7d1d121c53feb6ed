-- One drop's equipment events as delivered (see landing/lots.sql for the shared columns).
CREATE TEMP TABLE IF NOT EXISTS landing_equipment_events (
    drop_id VARCHAR NOT NULL,
    source_file VARCHAR NOT NULL,
    source_row BIGINT NOT NULL,
    tool_id VARCHAR,
    chamber_id VARCHAR,
    event_ts TIMESTAMP,
    kind VARCHAR,
    note VARCHAR,
    extra JSON,
    bad_cast VARCHAR[]
);
