-- Sampled inline metrology: one value per wafer, operation, parameter and site.
CREATE TABLE IF NOT EXISTS core.inline_meas (
    wafer_id VARCHAR NOT NULL,
    operation VARCHAR NOT NULL,
    param VARCHAR NOT NULL,
    site BIGINT NOT NULL,
    value DOUBLE NOT NULL,
    drop_id VARCHAR NOT NULL,
    source_file VARCHAR NOT NULL,
    extra JSON
);
