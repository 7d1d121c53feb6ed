-- The landed wafers, typed and de-duplicated (see staging/lots.sql).
CREATE TEMP VIEW IF NOT EXISTS staging_wafers AS
SELECT drop_id, min(source_file) AS source_file, wafer_id, lot_id, slot, any_value(extra) AS extra
FROM landing_wafers
GROUP BY drop_id, wafer_id, lot_id, slot;
