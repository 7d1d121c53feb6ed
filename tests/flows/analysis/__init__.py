"""Tests of flows/analysis/."""
