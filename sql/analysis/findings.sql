-- The contract's findings write-back: one row per localised effect inside a sub-process.
CREATE TABLE IF NOT EXISTS findings (
    run_id VARCHAR NOT NULL,
    layer VARCHAR NOT NULL,
    operation VARCHAR,
    tool_id VARCHAR,
    chamber_id VARCHAR,
    param VARCHAR,
    effect VARCHAR NOT NULL,
    estimate DOUBLE,
    yield_impact DOUBLE,
    ci_low DOUBLE,
    ci_high DOUBLE,
    p_value DOUBLE
);
