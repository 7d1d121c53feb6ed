-- One row per product and die position delivered in core.sort_die: the die's radius r, zone
-- and quadrant (contract: "Die geometry and zones"). r is the distance from the centre of the
-- product's grid (the midpoint of the bounding box of its positions) over the largest such
-- distance of the product. Zones are decided on exact integers: with doubled coordinates the
-- squared distance d2 = (2 x - xmin - xmax)^2 + (2 y - ymin - ymax)^2 is an integer, and
-- center r <= 0.5 <=> 4 d2 <= max_d2; edge r > 0.8 <=> 25 d2 > 16 max_d2; else middle
-- (`flows.analysis.die_geometry.grid_zones` decides the same way).
-- Quadrants in die coordinates, counter-clockwise from +x, each half-axis in one quadrant so a
-- symmetric grid splits evenly: 1 dx > 0, dy >= 0; 2 dx <= 0, dy > 0; 3 dx < 0, dy <= 0;
-- 4 dx >= 0, dy < 0; the centre (dx = dy = 0) is quadrant 1.
CREATE OR REPLACE VIEW marts.die_position AS
WITH positions AS (
    SELECT DISTINCT l.product, d.die_x, d.die_y
    FROM core.sort_die AS d
    LEFT JOIN core.wafers AS w USING (wafer_id)
    LEFT JOIN core.lots AS l USING (lot_id)
),
offsets AS (
    SELECT product, die_x, die_y,
        2 * die_x - min(die_x) OVER grid - max(die_x) OVER grid AS dx2,
        2 * die_y - min(die_y) OVER grid - max(die_y) OVER grid AS dy2
    FROM positions
    WINDOW grid AS (PARTITION BY product)
),
squared AS (
    SELECT *, dx2 * dx2 + dy2 * dy2 AS d2, max(dx2 * dx2 + dy2 * dy2) OVER (PARTITION BY product) AS max_d2
    FROM offsets
)
SELECT product, die_x, die_y, dx2 / 2.0 AS dx, dy2 / 2.0 AS dy, d2, max_d2,
    CASE WHEN max_d2 > 0 THEN sqrt(d2 / max_d2) ELSE 0.0 END AS r,
    CASE WHEN 4 * d2 <= max_d2 THEN 'center' WHEN 25 * d2 <= 16 * max_d2 THEN 'middle'
        ELSE 'edge' END AS zone,
    CASE WHEN dx2 > 0 AND dy2 >= 0 THEN 1 WHEN dx2 <= 0 AND dy2 > 0 THEN 2
        WHEN dx2 < 0 AND dy2 <= 0 THEN 3 WHEN dx2 >= 0 AND dy2 < 0 THEN 4 ELSE 1 END AS quadrant
FROM squared;
