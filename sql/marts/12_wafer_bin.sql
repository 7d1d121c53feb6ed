-- Failing dies per wafer and fail bin (a bin core.bin_rule does not call good), with the
-- bin's name where bin_defs gives one and the wafer's dies: a bin Pareto sums `dies_fail`
-- over wafers, a model per bin fits dies_fail out of dies_total. Bins with no die on a wafer
-- have no row (zero).
CREATE OR REPLACE VIEW marts.wafer_bin AS
WITH per_bin AS (
    SELECT wafer_id, lot_id, product, bin, good, count(*) AS dies,
        sum(count(*)) OVER (PARTITION BY wafer_id)::BIGINT AS dies_total
    FROM marts.die_frame
    GROUP BY wafer_id, lot_id, product, bin, good
)
SELECT b.wafer_id, b.lot_id, b.product, b.bin, r.name AS bin_name,
    b.dies AS dies_fail, b.dies_total
FROM per_bin AS b
LEFT JOIN core.bin_rule AS r ON r.bin = b.bin
WHERE NOT b.good;
