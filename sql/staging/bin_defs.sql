-- The landed bin definitions, typed and de-duplicated (see staging/lots.sql).
CREATE TEMP VIEW IF NOT EXISTS staging_bin_defs AS
SELECT drop_id, min(source_file) AS source_file, bin, name, good, any_value(extra) AS extra
FROM landing_bin_defs
GROUP BY drop_id, bin, name, good;
