-- Die-level hard bins; (wafer_id, die_x, die_y) is unique; bin 1 means good.
CREATE TABLE IF NOT EXISTS core.sort_die (
    wafer_id VARCHAR NOT NULL,
    die_x BIGINT NOT NULL,
    die_y BIGINT NOT NULL,
    bin BIGINT NOT NULL,
    drop_id VARCHAR NOT NULL,
    source_file VARCHAR NOT NULL,
    extra JSON
);
