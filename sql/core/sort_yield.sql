-- The current wafer sort result, one row per wafer: a later re-test (test_ts) replaced
-- any earlier row when its drop merged.
CREATE TABLE IF NOT EXISTS core.sort_yield (
    wafer_id VARCHAR NOT NULL,
    dies_total BIGINT NOT NULL,
    dies_good BIGINT NOT NULL,
    test_ts TIMESTAMP,
    drop_id VARCHAR NOT NULL,
    source_file VARCHAR NOT NULL,
    extra JSON
);
