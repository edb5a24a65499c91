"""``--format json``: the stable contract documented in the README."""

from __future__ import annotations

import json

from pwlint import __version__
from pwlint.hookspecs import hookimpl


def as_dict(result) -> dict:
    return {
        "version": __version__,
        "files": [file.to_json() for file in result.files],
        "findings": [finding.to_json() for finding in result.findings],
    }


class JsonReporter:
    name = "json"

    @staticmethod
    def report(result, stream) -> None:
        json.dump(as_dict(result), stream, indent=2)
        stream.write("\n")


@hookimpl
def pwlint_register_reporters(register):
    register(JsonReporter())
