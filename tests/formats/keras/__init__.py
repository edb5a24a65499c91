"""Tests of the Keras reader and fix backend."""
