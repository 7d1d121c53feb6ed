-- One row per die of core.sort_die: its wafer, lot, product, hard bin and whether the bin is
-- good (core.bin_rule, as core.wafer_yield counts it: a bin it does not list is a fail).
-- Every delivered die is here, also of a wafer whose yield comes from sort_yield. Without the
-- die positions' geometry (marts.die_frame adds it): a filter on wafer_id reads only the
-- matching dies, where one through die_frame would first derive every product's grid.
CREATE OR REPLACE VIEW marts.die_result AS
SELECT d.wafer_id, w.lot_id, l.product, d.die_x, d.die_y, d.bin,
    list_contains((SELECT coalesce(list(bin), []) FROM core.bin_rule WHERE good), d.bin) AS good
FROM core.sort_die AS d
LEFT JOIN core.wafers AS w USING (wafer_id)
LEFT JOIN core.lots AS l USING (lot_id);
