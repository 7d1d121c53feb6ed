-- The landed sort results, typed and de-duplicated, one row per wafer: when a drop holds a
-- re-test, the row with the latest test_ts wins (equal test_ts with different counts is a
-- duplicate key and rejects the drop before this view is read).
CREATE TEMP VIEW IF NOT EXISTS staging_sort_yield AS
SELECT drop_id, source_file, wafer_id, dies_total, dies_good, test_ts, extra
FROM (
    SELECT drop_id, min(source_file) AS source_file, wafer_id, dies_total, dies_good, test_ts,
        any_value(extra) AS extra
    FROM landing_sort_yield
    GROUP BY drop_id, wafer_id, dies_total, dies_good, test_ts
)
QUALIFY row_number() OVER (PARTITION BY wafer_id ORDER BY test_ts DESC NULLS LAST) = 1;
