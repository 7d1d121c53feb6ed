-- Schema for the core layer.
CREATE SCHEMA IF NOT EXISTS core;
