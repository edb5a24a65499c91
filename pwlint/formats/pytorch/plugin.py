"""The PyTorch formats as one pwlint plugin: the loader for ``.pt2`` and TorchScript
archives, and the fix backend for ``.pt2`` (TorchScript files are linted, not fixed).

The backend imports torch, so it is registered without being imported: linting
never needs it.
"""

from __future__ import annotations

from pwlint.formats.lazy import LazyBackend
from pwlint.formats.pytorch.loader import TorchLoader
from pwlint.hookspecs import hookimpl


@hookimpl
def pwlint_register_loaders(register):
    register(TorchLoader())


@hookimpl
def pwlint_register_backends(register):
    register(LazyBackend("torch", "pwlint.formats.pytorch.pt2.backend:Pt2Backend", checker="torch.export.load of a sanitised copy", runtime="torch", output_suffixes=(".pt2",)))
