-- The landed processing history, typed and de-duplicated (see staging/lots.sql).
CREATE TEMP VIEW IF NOT EXISTS staging_step_history AS
SELECT
    drop_id, min(source_file) AS source_file, wafer_id, step_seq, operation, layer, tool_id,
    chamber_id, recipe, track_in_ts, track_out_ts, any_value(extra) AS extra
FROM landing_step_history
GROUP BY ALL;
