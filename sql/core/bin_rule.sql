-- The good/fail rule per hard bin that wafer yield is counted by: every delivered bin_defs row,
-- and the contract's default for bin 1 (good) where no bin_defs row defines bin 1. A bin
-- listed nowhere here is a fail (the default for every other bin). source: 'bin_defs' or
-- 'default'. Without any bin_defs this is the single row (1, NULL, true, 'default'), and
-- core.wafer_yield counts exactly the dies of bin 1, as it did before bin_defs existed.
CREATE OR REPLACE VIEW core.bin_rule AS
SELECT bin, name, good, 'bin_defs' AS source
FROM core.bin_defs
UNION ALL
SELECT 1::BIGINT AS bin, NULL::VARCHAR AS name, true AS good, 'default' AS source
WHERE NOT EXISTS (SELECT 1 FROM core.bin_defs WHERE bin = 1);
