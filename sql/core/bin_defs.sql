-- Hard-bin definitions as delivered: one row per bin (the key), its name and whether a die in
-- it is good. A bin is defined once: a later drop defining it differently is rejected
-- (conflicts_earlier_drop, see flows/warehouse/contract_rules.py), never replaced. The rule
-- the yield uses, defaults included, is the view core.bin_rule.
CREATE TABLE IF NOT EXISTS core.bin_defs (
    bin BIGINT NOT NULL,
    name VARCHAR NOT NULL,
    good BOOLEAN NOT NULL,
    drop_id VARCHAR NOT NULL,
    source_file VARCHAR NOT NULL,
    extra JSON
);
