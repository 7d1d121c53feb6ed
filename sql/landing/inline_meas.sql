-- One drop's inline metrology as delivered (see landing/lots.sql for the shared columns).
CREATE TEMP TABLE IF NOT EXISTS landing_inline_meas (
    drop_id VARCHAR NOT NULL,
    source_file VARCHAR NOT NULL,
    source_row BIGINT NOT NULL,
    wafer_id VARCHAR,
    operation VARCHAR,
    param VARCHAR,
    site BIGINT,
    value DOUBLE,
    extra JSON,
    bad_cast VARCHAR[]
);
