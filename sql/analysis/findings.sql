-- The contract's findings write-back: one row per localised effect inside a sub-process.
-- yield_impact is the finding's loss in points of fab yield, loss_on_wafers the same on its
-- own wafers; p_adjusted is Holm over the run's findings (at least its operation's adjusted
-- p); model names the fit the numbers come from. onset_ts .. bin are contract v2 columns,
-- NULL until the analysis estimates them.
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
-- columns added by issue 14 (databases created before it gain them here)
ALTER TABLE findings ADD COLUMN IF NOT EXISTS p_adjusted DOUBLE;
ALTER TABLE findings ADD COLUMN IF NOT EXISTS material BOOLEAN;
ALTER TABLE findings ADD COLUMN IF NOT EXISTS loss_on_wafers DOUBLE;
ALTER TABLE findings ADD COLUMN IF NOT EXISTS n_wafers BIGINT;
ALTER TABLE findings ADD COLUMN IF NOT EXISTS n_lots BIGINT;
ALTER TABLE findings ADD COLUMN IF NOT EXISTS aliased_with VARCHAR;
ALTER TABLE findings ADD COLUMN IF NOT EXISTS model VARCHAR;
ALTER TABLE findings ADD COLUMN IF NOT EXISTS onset_ts TIMESTAMP;
ALTER TABLE findings ADD COLUMN IF NOT EXISTS onset_low TIMESTAMP;
ALTER TABLE findings ADD COLUMN IF NOT EXISTS onset_high TIMESTAMP;
ALTER TABLE findings ADD COLUMN IF NOT EXISTS end_ts TIMESTAMP;
ALTER TABLE findings ADD COLUMN IF NOT EXISTS active BOOLEAN;
ALTER TABLE findings ADD COLUMN IF NOT EXISTS event VARCHAR;
ALTER TABLE findings ADD COLUMN IF NOT EXISTS zone VARCHAR;
ALTER TABLE findings ADD COLUMN IF NOT EXISTS bin BIGINT;
