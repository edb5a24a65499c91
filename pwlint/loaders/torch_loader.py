"""The PyTorch loader (work in progress): registers nothing yet."""

from pwlint.hookspecs import hookimpl


@hookimpl
def pwlint_register_loaders(register):
    pass
