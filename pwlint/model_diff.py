"""``pwlint diff OLD NEW``: placeholder, being written."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("paths", nargs="*")


def run(registry, args) -> int:
    from pwlint.errors import PwlintError

    raise PwlintError("pwlint diff is not implemented yet")
