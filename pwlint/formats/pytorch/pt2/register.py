"""Registers the ``.pt2`` fix backend without importing it (or torch): linting never needs it."""

from pwlint.hookspecs import hookimpl


class _LazyPt2Backend:
    name = "torch"

    def __getattr__(self, attribute):
        from pwlint.formats.pytorch.pt2.backend import Pt2Backend

        return getattr(Pt2Backend, attribute)


@hookimpl
def pwlint_register_backends(register):
    register(_LazyPt2Backend())
