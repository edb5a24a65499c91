"""The Keras format as one pwlint plugin: its loader and its fix backend.

Neither the reader's modules nor the backend (which imports Keras) are imported
when the plugin is registered: the first Keras file, or the first fix, imports them.
"""

from __future__ import annotations

from pwlint.formats.keras.loader import KerasLoader
from pwlint.hookspecs import hookimpl


class LazyKerasBackend:
    """:class:`pwlint.formats.keras.backend.KerasBackend`, imported on first use."""

    name = "keras"

    def __getattr__(self, attribute):
        from pwlint.formats.keras.backend import KerasBackend

        return getattr(KerasBackend, attribute)


@hookimpl
def pwlint_register_loaders(register):
    register(KerasLoader())


@hookimpl
def pwlint_register_backends(register):
    register(LazyKerasBackend())
