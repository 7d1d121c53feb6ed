-- Maintenance and changes of the equipment (PM, repair, qual, recipe change, other), per tool
-- or per chamber of a tool. chamber_id NULL means the whole tool, and is a value of the key
-- (tool_id, chamber_id, event_ts, kind) like any other: rules and merges compare it with
-- IS NOT DISTINCT FROM, so a whole-tool event is delivered once, however often re-delivered.
CREATE TABLE IF NOT EXISTS core.equipment_events (
    tool_id VARCHAR NOT NULL,
    chamber_id VARCHAR,
    event_ts TIMESTAMP NOT NULL,
    kind VARCHAR NOT NULL,
    note VARCHAR,
    drop_id VARCHAR NOT NULL,
    source_file VARCHAR NOT NULL,
    extra JSON
);
