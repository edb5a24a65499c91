"""ONNX: the reader (wire format, guard, shapes, patterns) and the fix backend."""
