"""Tests of the PyTorch readers and the .pt2 fix backend."""
