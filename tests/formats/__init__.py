"""Tests of the format packages: reading by content, missing weights."""
