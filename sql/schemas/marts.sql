-- Schema for the marts layer.
CREATE SCHEMA IF NOT EXISTS marts;
