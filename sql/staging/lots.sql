-- The landed lots, typed and de-duplicated: rows repeated verbatim inside a drop count once.
-- (Rows sharing a key with different values never get here: the drop is rejected first.)
CREATE TEMP VIEW IF NOT EXISTS staging_lots AS
SELECT drop_id, min(source_file) AS source_file, lot_id, product, route, start_ts, any_value(extra) AS extra
FROM landing_lots
GROUP BY drop_id, lot_id, product, route, start_ts;
