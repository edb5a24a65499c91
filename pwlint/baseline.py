"""Baselines: placeholder, being written."""
