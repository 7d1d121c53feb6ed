-- The model frame for metrology: one row per wafer, operation and parameter, summarising the
-- measured sites (mean, standard deviation, count), with the layer of the operation, the lot
-- and the yield. The sums run in a fixed order (ORDER BY inside the aggregates): a parallel
-- aggregate adds partial sums in whatever order its threads finish, so means differed in their
-- last bits between reads of the same database (four reads of a simulated year: four different
-- results; ordered: one, at 0.7 s instead of 0.25 s), and with them the model frames' hash
-- that the pipeline's fit cache is keyed on.
CREATE OR REPLACE VIEW marts.wafer_param AS
SELECT
    m.wafer_id, f.lot_id, f.product, o.layer, m.operation, m.param,
    count(*) AS n_sites,
    avg(m.value ORDER BY m.value) AS value_mean,
    stddev_samp(m.value ORDER BY m.value) AS value_sd,
    f.dies_good, f.dies_total, f.yield
FROM core.inline_meas AS m
JOIN marts.wafer_frame AS f USING (wafer_id)
LEFT JOIN marts.operation_layer AS o USING (operation)
GROUP BY ALL;
