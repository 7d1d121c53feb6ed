-- The contract's ranking write-back: one row per sub-process (layer) per analysis run.
-- A layer that could not be ranked (no convergence, too little data, a failed fit) keeps its
-- row with rank NULL, its status and the reason in plain words: never silently dropped.
CREATE TABLE IF NOT EXISTS subprocess_ranking (
    run_id VARCHAR NOT NULL,
    rank BIGINT,
    layer VARCHAR NOT NULL,
    yield_impact DOUBLE,
    ci_low DOUBLE,
    ci_high DOUBLE,
    p_value DOUBLE,
    variance_share DOUBLE,
    status VARCHAR NOT NULL,
    reason VARCHAR
);
-- issue 14: significant = a loss finding with adjusted p < 0.05; material = significant and
-- the interval's lower end above the run's materiality threshold; loss_label e.g. "no loss found"
ALTER TABLE subprocess_ranking ADD COLUMN IF NOT EXISTS significant BOOLEAN;
ALTER TABLE subprocess_ranking ADD COLUMN IF NOT EXISTS material BOOLEAN;
ALTER TABLE subprocess_ranking ADD COLUMN IF NOT EXISTS loss_label VARCHAR;
