-- The wafer x layer model frame: per wafer and sub-process, the operations of that layer
-- with tool and chamber, the metrology summaries measured after them, the lot and the yield.
-- Nested lists keep it one row per wafer and layer; unnest them in Polars/Arrow as needed.
CREATE OR REPLACE VIEW marts.wafer_layer AS
WITH steps AS (
    SELECT wafer_id, layer,
        list({'operation': operation, 'step_seq': step_seq, 'tool_id': tool_id,
              'chamber_id': chamber_id, 'chamber_key': chamber_key} ORDER BY step_seq) AS steps
    FROM marts.wafer_operation
    GROUP BY wafer_id, layer
),
metrology AS (
    SELECT wafer_id, layer,
        list({'operation': operation, 'param': param, 'n_sites': n_sites,
              'value_mean': value_mean, 'value_sd': value_sd} ORDER BY param) AS metrology
    FROM marts.wafer_param
    GROUP BY wafer_id, layer
)
SELECT
    s.wafer_id, f.lot_id, f.product, s.layer, s.steps, m.metrology,
    f.dies_good, f.dies_total, f.yield
FROM steps AS s
JOIN marts.wafer_frame AS f USING (wafer_id)
LEFT JOIN metrology AS m USING (wafer_id, layer);
