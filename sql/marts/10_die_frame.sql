-- One row per die (marts.die_result) with its position's radius, zone and quadrant
-- (marts.die_position): what the zone and signature analyses read.
CREATE OR REPLACE VIEW marts.die_frame AS
SELECT r.wafer_id, r.lot_id, r.product, r.die_x, r.die_y, r.bin, r.good,
    p.r, p.zone, p.quadrant
FROM marts.die_result AS r
LEFT JOIN marts.die_position AS p
    ON p.product IS NOT DISTINCT FROM r.product AND p.die_x = r.die_x AND p.die_y = r.die_y;
