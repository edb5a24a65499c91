"""A fix backend registered without importing it: linting never needs a backend, and
backends import their framework (onnxruntime's numerics, Keras, torch).

The proxy has the backend's contract itself (``name``, ``checker``, ``runtime``,
``open``, ``run``), not only through ``__getattr__``: Python 3.12 checks protocols with
``inspect.getattr_static``, which does not call ``__getattr__``.
"""

from __future__ import annotations

import importlib


class LazyBackend:
    """The backend ``module:attribute``, imported on the first call."""

    def __init__(self, name: str, target: str, *, checker: str, runtime: str, **declared) -> None:
        self.name = name
        self.checker = checker
        self.runtime = runtime
        self._target = target
        # what the fix package asks before any model is read (``output_suffixes``,
        # ``keeps_own_suffix``, ``edits_without_running``): answered without the import
        for attribute, value in declared.items():
            setattr(self, attribute, value)

    def backend(self):
        module, _, attribute = self._target.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def open(self, path: str):
        return self.backend().open(path)

    def run(self, model_file, feeds=None):
        return self.backend().run(model_file, feeds)

    def __getattr__(self, attribute):
        if attribute.startswith("_"):  # copy/pickle probes: not the backend's business
            raise AttributeError(attribute)
        return getattr(self.backend(), attribute)
