"""``--format junit``: JUnit XML, one testcase per model, for CI systems that show test reports.

A model fails when it has findings at or above its fail-on severity: one ``<failure>``
listing them, ``CODE message`` per line. Findings below fail-on do not fail it; they go
to ``<system-out>``. A file that could not be read is an ``<error>``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from pwlint.findings import Severity
from pwlint.hookspecs import hookimpl

# characters XML 1.0 cannot hold at all, even escaped
_ILLEGAL_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml(text: str) -> str:
    return _ILLEGAL_XML.sub("\ufffd", text)


def _line(finding) -> str:
    return f"{finding.code} {' '.join(finding.message.split())}"


def _fails(finding, fail_on) -> bool:
    severity = finding.severity if finding.severity is not None else Severity.WARNING
    return severity.rank >= fail_on.rank


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def as_xml(result) -> ET.Element:
    suites = ET.Element("testsuites")
    suite = ET.SubElement(suites, "testsuite", name="pwlint")
    failures = errors = 0
    for file in result.files:
        case = ET.SubElement(suite, "testcase", classname="pwlint", name=_xml(file.path))
        if file.error:
            errors += 1
            ET.SubElement(case, "error", message=_xml(file.error), type="pwlint").text = _xml(file.error)
        failing, passing = [], []
        for finding in file.findings:
            (failing if _fails(finding, file.fail_on) else passing).append(finding)
        if failing:
            failures += 1
            failure = ET.SubElement(case, "failure", message=_count(len(failing), "finding"), type="pwlint")
            failure.text = _xml("\n".join(_line(f) for f in failing))
        if passing:
            ET.SubElement(case, "system-out").text = _xml("\n".join(_line(f) for f in passing))
    for element in (suites, suite):
        element.set("tests", str(len(result.files)))
        element.set("failures", str(failures))
        element.set("errors", str(errors))
    return suites


class JunitReporter:
    name = "junit"

    @staticmethod
    def report(result, stream) -> None:
        tree = ET.ElementTree(as_xml(result))
        ET.indent(tree)
        stream.write('<?xml version="1.0" encoding="UTF-8"?>\n')
        stream.write(ET.tostring(tree.getroot(), encoding="unicode"))
        stream.write("\n")


@hookimpl
def pwlint_register_reporters(register):
    register(JunitReporter())
