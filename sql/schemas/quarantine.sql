-- Schema for the quarantine layer.
CREATE SCHEMA IF NOT EXISTS quarantine;
