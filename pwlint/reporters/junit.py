"""The junit output format (work in progress): registers nothing yet."""

from pwlint.hookspecs import hookimpl


@hookimpl
def pwlint_register_reporters(register):
    pass
