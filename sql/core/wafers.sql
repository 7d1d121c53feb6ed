-- Every wafer of every merged drop, once (see core/lots.sql for the provenance columns).
CREATE TABLE IF NOT EXISTS core.wafers (
    wafer_id VARCHAR NOT NULL,
    lot_id VARCHAR NOT NULL,
    slot BIGINT NOT NULL,
    drop_id VARCHAR NOT NULL,
    source_file VARCHAR NOT NULL,
    extra JSON
);
