-- The landed die bins, typed and de-duplicated (see staging/lots.sql).
CREATE TEMP VIEW IF NOT EXISTS staging_sort_die AS
SELECT drop_id, min(source_file) AS source_file, wafer_id, die_x, die_y, bin, any_value(extra) AS extra
FROM landing_sort_die
GROUP BY drop_id, wafer_id, die_x, die_y, bin;
