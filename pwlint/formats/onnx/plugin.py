"""The ONNX format as one pwlint plugin: its loader and its fix backend.

The backend is registered without being imported (nor onnx's numerics with it):
linting never needs it, and the backend module imports the loader to lint a fixed
model again, so the loader must not import the backend.
"""

from __future__ import annotations

from pwlint.formats.lazy import LazyBackend
from pwlint.formats.onnx.loader import OnnxLoader
from pwlint.hookspecs import hookimpl


@hookimpl
def pwlint_register_loaders(register):
    register(OnnxLoader())


@hookimpl
def pwlint_register_backends(register):
    register(LazyBackend("onnx", "pwlint.formats.onnx.backend:OnnxBackend", checker="the ONNX checker", runtime="onnxruntime",
                         output_suffixes=(".onnx",), keeps_own_suffix=True, edits_without_running=True))
