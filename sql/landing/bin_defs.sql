-- One drop's hard-bin definitions as delivered (see landing/lots.sql for the shared columns).
CREATE TEMP TABLE IF NOT EXISTS landing_bin_defs (
    drop_id VARCHAR NOT NULL,
    source_file VARCHAR NOT NULL,
    source_row BIGINT NOT NULL,
    bin BIGINT,
    name VARCHAR,
    good BOOLEAN,
    extra JSON,
    bad_cast VARCHAR[]
);
