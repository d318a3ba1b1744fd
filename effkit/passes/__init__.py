"""Passes: each takes a Model and a frozen config and returns a new Model (the original survives)."""
