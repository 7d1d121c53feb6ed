"""Tests of flows/warehouse/."""
