-- Final yield per wafer: the wafer sort result where there is one, otherwise the die bins
-- aggregated, a die counting good when core.bin_rule says its bin is good (by default bin 1
-- only; a bin that rule does not list is a fail). source says which.
CREATE OR REPLACE VIEW core.wafer_yield AS
SELECT wafer_id, dies_good, dies_total, test_ts, 'sort_yield' AS source
FROM core.sort_yield
UNION ALL
SELECT d.wafer_id, count(*) FILTER (WHERE coalesce(r.good, false)) AS dies_good,
    count(*) AS dies_total, NULL::TIMESTAMP AS test_ts, 'sort_die' AS source
FROM core.sort_die AS d
LEFT JOIN core.bin_rule AS r USING (bin)
WHERE NOT EXISTS (SELECT 1 FROM core.sort_yield AS y WHERE y.wafer_id = d.wafer_id)
GROUP BY d.wafer_id;
