-- One row per die of core.sort_die: its wafer, lot, product, hard bin, whether the bin is good
-- (core.bin_rule, as core.wafer_yield counts it: a bin it does not list is a fail), and the
-- position's radius, zone and quadrant (marts.die_position). Every delivered die is here, also
-- of a wafer whose yield comes from sort_yield: the die marts describe where dies fail.
CREATE OR REPLACE VIEW marts.die_frame AS
SELECT d.wafer_id, w.lot_id, l.product, d.die_x, d.die_y, d.bin,
    list_contains((SELECT coalesce(list(bin), []) FROM core.bin_rule WHERE good), d.bin) AS good,
    p.r, p.zone, p.quadrant
FROM core.sort_die AS d
LEFT JOIN core.wafers AS w USING (wafer_id)
LEFT JOIN core.lots AS l USING (lot_id)
LEFT JOIN marts.die_position AS p
    ON p.product IS NOT DISTINCT FROM l.product AND p.die_x = d.die_x AND p.die_y = d.die_y;
