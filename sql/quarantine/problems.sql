-- Each rule a rejected (or partly quarantined) drop broke: which file, which rule,
-- how many rows, the message shown to the user, and a few example rows (JSON).
CREATE TABLE IF NOT EXISTS quarantine.problems (
    attempt_id BIGINT NOT NULL,
    drop_id VARCHAR NOT NULL,
    table_name VARCHAR,
    source_file VARCHAR,
    rule VARCHAR NOT NULL,
    severity VARCHAR NOT NULL,
    n_rows BIGINT,
    message VARCHAR NOT NULL,
    examples JSON
);
