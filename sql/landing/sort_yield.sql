-- One drop's wafer sort results as delivered (see landing/lots.sql for the shared columns).
CREATE TEMP TABLE IF NOT EXISTS landing_sort_yield (
    drop_id VARCHAR NOT NULL,
    source_file VARCHAR NOT NULL,
    source_row BIGINT NOT NULL,
    wafer_id VARCHAR,
    dies_total BIGINT,
    dies_good BIGINT,
    test_ts TIMESTAMP,
    extra JSON,
    bad_cast VARCHAR[]
);
