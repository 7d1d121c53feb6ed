-- The landed inline metrology, typed and de-duplicated (see staging/lots.sql).
CREATE TEMP VIEW IF NOT EXISTS staging_inline_meas AS
SELECT drop_id, min(source_file) AS source_file, wafer_id, operation, param, site, value,
    any_value(extra) AS extra
FROM landing_inline_meas
GROUP BY ALL;
