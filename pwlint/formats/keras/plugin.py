"""The Keras format as one pwlint plugin: its loader and its fix backend.

Neither the reader's modules nor the backend (which imports Keras) are imported
when the plugin is registered: the first Keras file, or the first fix, imports them.
"""

from __future__ import annotations

from pwlint.formats.keras.loader import KerasLoader
from pwlint.formats.lazy import LazyBackend
from pwlint.hookspecs import hookimpl


@hookimpl
def pwlint_register_loaders(register):
    register(KerasLoader())


@hookimpl
def pwlint_register_backends(register):
    register(LazyBackend("keras", "pwlint.formats.keras.backend:KerasBackend", checker="pwlint's validated rebuild (Keras from_config, safe_mode=True)", runtime="Keras",
                         output_suffixes=(".keras", ".h5", ".hdf5")))
