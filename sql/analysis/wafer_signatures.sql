-- Per analysis run, the spatial signature of each wafer with die data
-- (flows.analysis.signatures): `none`, `center`, `edge_ring`, `cluster`, `scratch` or
-- `random` (fails present, not spatially clustered by the join-count test), and the score
-- that decided the class (a zone's relative loss 1 - Y_zone / Y_rest for center/edge_ring,
-- the line's z for scratch, the join-count z for cluster and random, the fail rate for none).
CREATE TABLE IF NOT EXISTS wafer_signatures (
    run_id VARCHAR NOT NULL,
    wafer_id VARCHAR NOT NULL,
    signature VARCHAR NOT NULL,
    score DOUBLE NOT NULL
);  -- (run_id, wafer_id) is the key; `store_wafer_signatures` replaces a run's rows whole
