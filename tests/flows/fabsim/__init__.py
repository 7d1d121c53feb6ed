"""Tests of flows/fabsim/."""
