-- The contract's ranking write-back: one row per sub-process (layer) per analysis run.
CREATE TABLE IF NOT EXISTS subprocess_ranking (
    run_id VARCHAR NOT NULL,
    rank BIGINT NOT NULL,
    layer VARCHAR NOT NULL,
    yield_impact DOUBLE,
    ci_low DOUBLE,
    ci_high DOUBLE,
    p_value DOUBLE,
    variance_share DOUBLE
);
