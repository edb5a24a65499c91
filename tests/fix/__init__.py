"""Tests of fixing: the round loop, verification, writing, and the ONNX fixes."""
