-- One row per wafer with its lot and final yield (NULL until sort results arrive).
CREATE OR REPLACE VIEW marts.wafer_frame AS
SELECT
    w.wafer_id, w.lot_id, l.product, l.route, w.slot,
    y.dies_good, y.dies_total,
    y.dies_good::DOUBLE / y.dies_total AS yield,
    y.source AS yield_source
FROM core.wafers AS w
LEFT JOIN core.lots AS l USING (lot_id)
LEFT JOIN core.wafer_yield AS y USING (wafer_id);
