-- One row per product with die data: the centre of its die grid (the midpoint of the bounding
-- box of its die positions), the largest squared distance from it on doubled coordinates
-- (`max_d2`, what each die's radius is normalised by) and the count of positions per zone.
CREATE OR REPLACE VIEW marts.product_die_grid AS
SELECT product,
    any_value(die_x - dx) AS center_x, any_value(die_y - dy) AS center_y,
    any_value(max_d2) AS max_d2, count(*) AS n_positions,
    count(*) FILTER (WHERE zone = 'center') AS n_center,
    count(*) FILTER (WHERE zone = 'middle') AS n_middle,
    count(*) FILTER (WHERE zone = 'edge') AS n_edge
FROM marts.die_position
GROUP BY product;
