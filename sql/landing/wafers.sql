-- One drop's wafers as delivered (see landing/lots.sql for the shared columns).
CREATE TEMP TABLE IF NOT EXISTS landing_wafers (
    drop_id VARCHAR NOT NULL,
    source_file VARCHAR NOT NULL,
    source_row BIGINT NOT NULL,
    wafer_id VARCHAR,
    lot_id VARCHAR,
    slot BIGINT,
    extra JSON,
    bad_cast VARCHAR[]
);
