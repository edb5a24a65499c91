"""Registers the Keras fix backend without importing it (or Keras): linting never needs it."""

from pwlint.hookspecs import hookimpl


class _LazyKerasBackend:
    name = "keras"

    def __getattr__(self, attribute):
        from pwlint.formats.keras.backend import KerasBackend

        return getattr(KerasBackend, attribute)


@hookimpl
def pwlint_register_backends(register):
    register(_LazyKerasBackend())
