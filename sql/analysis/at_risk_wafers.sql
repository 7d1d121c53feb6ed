-- The contract's at-risk wafers: for every active excursion of a run, each wafer processed on
-- its tool or chamber since the onset (from the onset interval's lower end, so that no exposed
-- wafer is missed). `sorted` false is work in progress, whose `yield` is still NULL.
CREATE TABLE IF NOT EXISTS at_risk_wafers (
    run_id VARCHAR NOT NULL,
    wafer_id VARCHAR NOT NULL,
    layer VARCHAR NOT NULL,
    operation VARCHAR NOT NULL,
    tool_id VARCHAR NOT NULL,
    chamber_id VARCHAR,
    processed_ts TIMESTAMP NOT NULL,
    sorted BOOLEAN NOT NULL,
    yield DOUBLE
);
