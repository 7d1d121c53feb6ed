-- The model frame for equipment effects: one row per wafer and operation, with the tool and
-- chamber that processed it, its lot and its yield. A reworked operation counts by its last
-- pass (highest step_seq); n_passes says how often the wafer went through it.
-- chamber_key = tool_id:chamber_id, because a chamber id is unique only within its tool.
CREATE OR REPLACE VIEW marts.wafer_operation AS
SELECT
    s.wafer_id, f.lot_id, f.product, s.layer, s.operation, s.step_seq, s.n_passes,
    s.tool_id, s.chamber_id,
    s.tool_id || ':' || coalesce(s.chamber_id, '') AS chamber_key,
    s.recipe, s.track_in_ts, s.track_out_ts,
    f.dies_good, f.dies_total, f.yield
FROM (
    SELECT *, count(*) OVER (PARTITION BY wafer_id, operation) AS n_passes
    FROM core.step_history
    QUALIFY row_number() OVER (PARTITION BY wafer_id, operation ORDER BY step_seq DESC) = 1
) AS s
JOIN marts.wafer_frame AS f USING (wafer_id);
