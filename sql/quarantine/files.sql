-- Files of a rejected drop that could not be read as a table at all (corrupt Parquet,
-- not UTF-8, not a table, empty): the bytes are kept so nothing delivered is lost.
CREATE TABLE IF NOT EXISTS quarantine.files (
    attempt_id BIGINT NOT NULL,
    drop_id VARCHAR NOT NULL,
    table_name VARCHAR,
    source_file VARCHAR NOT NULL,
    rule VARCHAR NOT NULL,
    n_bytes BIGINT NOT NULL,
    content BLOB
);
