-- Final yield per wafer: the wafer sort result where there is one, otherwise the die bins
-- aggregated, a die counting good when core.bin_rule says its bin is good (by default bin 1
-- only; a bin that rule does not list is a fail). source says which. The good bins are read
-- once as a list (an uncorrelated subquery) rather than joined to every die row: a year holds
-- about 180 M die rows, and the list test costs little more than the old `bin = 1`.
CREATE OR REPLACE VIEW core.wafer_yield AS
SELECT wafer_id, dies_good, dies_total, test_ts, 'sort_yield' AS source
FROM core.sort_yield
UNION ALL
SELECT d.wafer_id,
    count(*) FILTER (
        WHERE list_contains((SELECT coalesce(list(bin), []) FROM core.bin_rule WHERE good), d.bin)
    ) AS dies_good,
    count(*) AS dies_total, NULL::TIMESTAMP AS test_ts, 'sort_die' AS source
FROM core.sort_die AS d
WHERE NOT EXISTS (SELECT 1 FROM core.sort_yield AS y WHERE y.wafer_id = d.wafer_id)
GROUP BY d.wafer_id;
