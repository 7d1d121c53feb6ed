-- Schema for the meta layer.
CREATE SCHEMA IF NOT EXISTS meta;
