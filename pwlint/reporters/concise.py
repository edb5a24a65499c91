"""``--format concise``: one line per finding, ``path:node: CODE message``, and nothing else.

``node`` is the first layer the finding names (``-`` when it names none), with its
module path first where the file records one (``classifier.1 (node_linear)``). There is no
summary, and files that could not be read are left to the errors on stderr.
"""

from __future__ import annotations

from pwlint.hookspecs import hookimpl


def one_line(text: str) -> str:
    return " ".join(text.split()) if ("\n" in text or "\r" in text) else text


class ConciseReporter:
    name = "concise"

    @staticmethod
    def report(result, stream) -> None:
        for finding in result.findings:
            node = finding.labels[0] if finding.nodes else "-"
            stream.write(f"{finding.path}:{one_line(node)}: {finding.code} {one_line(finding.message)}\n")


@hookimpl
def pwlint_register_reporters(register):
    register(ConciseReporter())
