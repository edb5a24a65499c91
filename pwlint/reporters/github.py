"""``--format github``: GitHub Actions workflow commands, one line per finding.

GitHub shows each as an annotation on the model file::

    ::warning file=m.onnx,line=1,title=pwlint (PW001)::fc: a Flatten feeds a Dense head ...

A model is a binary file, so every annotation is on line 1; the layer names are in the
message. Files that could not be read are ``::error`` annotations titled ``pwlint``.
"""

from __future__ import annotations

import os

from pwlint.hookspecs import hookimpl
from pwlint.reporters.text import coverage_note

#: the workflow command for each severity
COMMANDS = {"info": "notice", "warning": "warning", "error": "error"}


def escape_data(value: str) -> str:
    """Escape a command's message, as GitHub's toolkit does (``escapeData``)."""
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(value: str) -> str:
    """Escape a property value (``file=``, ``title=``), as GitHub's toolkit does (``escapeProperty``)."""
    return escape_data(value).replace(":", "%3A").replace(",", "%2C")


def command(name: str, message: str, **properties: object) -> str:
    props = ",".join(f"{key}={escape_property(str(value))}" for key, value in properties.items())
    return f"::{name} {props}::{escape_data(message)}"


def annotation_path(path: str) -> str:
    """``path`` as GitHub matches it against the repository's files: normalised
    (``./models/m.onnx`` from linting ``.`` is ``models/m.onnx``), with forward slashes."""
    return os.path.normpath(path).replace(os.sep, "/") if path else path


class GithubReporter:
    name = "github"

    @staticmethod
    def report(result, stream) -> None:
        for file in result.files:
            if file.error:
                stream.write(command("error", file.error, file=annotation_path(file.path), line=1, title="pwlint") + "\n")
            elif file in result.incomplete:
                note = coverage_note(file)
                stream.write(command("notice", note, file=annotation_path(file.path), line=1, title="pwlint (coverage)") + "\n")
            for finding in file.findings:
                severity = finding.severity.value if finding.severity else "warning"
                stream.write(command(
                    COMMANDS[severity], finding.message,
                    file=annotation_path(finding.path or file.path), line=1, title=f"pwlint ({finding.code})",
                ) + "\n")


@hookimpl
def pwlint_register_reporters(register):
    register(GithubReporter())
