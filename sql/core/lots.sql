-- Every lot of every merged drop, once. drop_id/source_file say where it came from;
-- extra keeps delivered columns the contract does not know (NULL when there were none).
CREATE TABLE IF NOT EXISTS core.lots (
    lot_id VARCHAR NOT NULL,
    product VARCHAR NOT NULL,
    route VARCHAR,
    start_ts TIMESTAMP,
    drop_id VARCHAR NOT NULL,
    source_file VARCHAR NOT NULL,
    extra JSON
);
