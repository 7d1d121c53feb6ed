-- The measured site values behind each wafer x operation x parameter mean of
-- marts.wafer_param, as one list ordered by site (for site-level or dispersion models).
CREATE OR REPLACE VIEW marts.analysis_param_sites AS
SELECT
    wafer_id, operation, param,
    list(value ORDER BY site) AS site_values,
    list(site ORDER BY site) AS sites
FROM core.inline_meas
GROUP BY wafer_id, operation, param;
