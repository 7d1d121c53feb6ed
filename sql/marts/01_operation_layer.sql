-- Which sub-process (layer) each operation belongs to, with its usual place in the route
-- and how much equipment it runs on.
CREATE OR REPLACE VIEW marts.operation_layer AS
SELECT
    operation,
    any_value(layer ORDER BY layer) AS layer,
    count(DISTINCT layer) AS n_layers,
    median(step_seq) AS median_step_seq,
    count(DISTINCT wafer_id) AS n_wafers,
    count(DISTINCT tool_id) AS n_tools,
    count(DISTINCT tool_id || ':' || coalesce(chamber_id, '')) AS n_chambers
FROM core.step_history
GROUP BY operation;
