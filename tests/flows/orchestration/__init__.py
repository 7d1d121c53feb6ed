"""Tests of flows/orchestration/."""
