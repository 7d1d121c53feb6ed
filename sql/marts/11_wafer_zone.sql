-- Good and total dies per wafer and zone (center, middle, edge) of the wafers with die data:
-- the counts a zone-level yield model fits. A zone without dies on a wafer has no row.
CREATE OR REPLACE VIEW marts.wafer_zone AS
SELECT wafer_id, lot_id, product, zone,
    count(*) FILTER (WHERE good) AS dies_good, count(*) AS dies_total
FROM marts.die_frame
GROUP BY wafer_id, lot_id, product, zone;
