-- One drop's die-level sort bins as delivered (see landing/lots.sql for the shared columns).
CREATE TEMP TABLE IF NOT EXISTS landing_sort_die (
    drop_id VARCHAR NOT NULL,
    source_file VARCHAR NOT NULL,
    source_row BIGINT NOT NULL,
    wafer_id VARCHAR,
    die_x BIGINT,
    die_y BIGINT,
    bin BIGINT,
    extra JSON,
    bad_cast VARCHAR[]
);
