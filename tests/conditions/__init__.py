"""Tests of the condition language (buddyrules.conditions)."""
