-- The landed equipment events, typed and de-duplicated (see staging/lots.sql). GROUP BY puts
-- the NULL chamber_id of whole-tool events in one group, as the key means it.
CREATE TEMP VIEW IF NOT EXISTS staging_equipment_events AS
SELECT drop_id, min(source_file) AS source_file, tool_id, chamber_id, event_ts, kind, note,
    any_value(extra) AS extra
FROM landing_equipment_events
GROUP BY drop_id, tool_id, chamber_id, event_ts, kind, note;
