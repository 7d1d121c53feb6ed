-- Site-level inline metrology for the process models: per wafer, operation and parameter the
-- measured values in site order, with the layer of the operation. One row per wafer x param
-- keeps the wafer x layer frame one row per wafer once the lists are pivoted beside it.
CREATE OR REPLACE VIEW marts.analysis_param_sites AS
SELECT
    m.wafer_id, o.layer, m.operation, m.param,
    list(m.value ORDER BY m.site) AS site_values
FROM core.inline_meas AS m
LEFT JOIN marts.operation_layer AS o USING (operation)
GROUP BY ALL;
