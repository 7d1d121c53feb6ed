-- One drop's lots as delivered, typed to the contract, with where each row came from.
-- Temporary: a drop lands here per ingest connection, is checked, then merged or quarantined.
-- bad_cast lists the columns whose delivered value could not be read as the contract type.
CREATE TEMP TABLE IF NOT EXISTS landing_lots (
    drop_id VARCHAR NOT NULL,
    source_file VARCHAR NOT NULL,
    source_row BIGINT NOT NULL,
    lot_id VARCHAR,
    product VARCHAR,
    route VARCHAR,
    start_ts TIMESTAMP,
    extra JSON,
    bad_cast VARCHAR[]
);
