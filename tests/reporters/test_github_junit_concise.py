"""The github, junit and concise report formats: built from a LintResult directly, and
once each through the real CLI on an ONNX model."""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET

import pytest

from pwlint.engine import FileResult, LintResult
from pwlint.findings import Finding, Severity
from pwlint.reporters.concise import ConciseReporter
from pwlint.reporters.github import GithubReporter
from pwlint.reporters.junit import JunitReporter
from tests.conftest import run_inprocess

#: a workflow command: ``::CMD file=F,line=1,title=T::MESSAGE``, nothing unescaped in it
GITHUB_LINE = re.compile(
    r"^::(?P<command>notice|warning|error) file=(?P<file>[^,:\r\n]+),line=1,title=(?P<title>[^,:\r\n]+)::(?P<message>[^\r\n]*)$"
)
CONCISE_LINE = re.compile(r"^(?P<path>.+?):(?P<node>[^:\s]+): (?P<code>PW\d{3}) (?P<message>\S.*)$")


def finding(code, message, severity, nodes=("fc",), path="m.onnx") -> Finding:
    return Finding(message=message, nodes=list(nodes), severity=severity, code=code, rule=f"rule-{code}", path=path)


def render(reporter, result) -> str:
    stream = io.StringIO()
    reporter.report(result, stream)
    return stream.getvalue()


def sample() -> LintResult:
    """Three models and an unreadable file: all severities, a clean model, a model whose
    findings are all below its fail-on, and a message that needs escaping."""
    return LintResult(files=[
        FileResult(path="models/m.onnx", format="onnx", findings=[
            finding("PW001", "Flatten 'flatten' feeds dense layer 'fc'", Severity.WARNING, ("flatten", "fc"), "models/m.onnx"),
            finding("PW002", "100% of it: odd, really\nsecond line", Severity.ERROR, ("conv",), "models/m.onnx"),
            finding("PW003", "no normalisation after 'conv'", Severity.INFO, (), "models/m.onnx"),
        ]),
        FileResult(path="clean.onnx", format="onnx"),
        FileResult(path="lenient.onnx", format="onnx", fail_on=Severity.ERROR, findings=[
            finding("PW004", "conv 'c' has a bias that BatchNorm 'bn' cancels", Severity.WARNING, ("c", "bn"), "lenient.onnx"),
        ]),
        FileResult(path="broken.onnx", error="broken.onnx: not an ONNX model: truncated, at byte 12"),
    ])


# github ---------------------------------------------------------------------------------

def test_github_one_command_per_finding_and_error():
    out = render(GithubReporter(), sample())
    lines = out.splitlines()
    assert out.endswith("\n")
    assert len(lines) == 5  # 4 findings + 1 unreadable file
    matches = [GITHUB_LINE.match(line) for line in lines]
    assert all(matches), lines
    parsed = [(m["command"], m["file"], m["title"], m["message"]) for m in matches]
    assert parsed == [
        ("warning", "models/m.onnx", "pwlint (PW001)", "Flatten 'flatten' feeds dense layer 'fc'"),
        ("error", "models/m.onnx", "pwlint (PW002)", "100%25 of it: odd, really%0Asecond line"),
        ("notice", "models/m.onnx", "pwlint (PW003)", "no normalisation after 'conv'"),
        ("warning", "lenient.onnx", "pwlint (PW004)", "conv 'c' has a bias that BatchNorm 'bn' cancels"),
        ("error", "broken.onnx", "pwlint", "broken.onnx: not an ONNX model: truncated, at byte 12"),
    ]
    assert lines[0] == "::warning file=models/m.onnx,line=1,title=pwlint (PW001)::Flatten 'flatten' feeds dense layer 'fc'"


@pytest.mark.parametrize("severity, command", [
    (Severity.INFO, "notice"), (Severity.WARNING, "warning"), (Severity.ERROR, "error"),
])
def test_github_severity_maps_to_command(severity, command):
    result = LintResult(files=[FileResult(path="m.onnx", findings=[finding("PW001", "msg", severity)])])
    assert render(GithubReporter(), result) == f"::{command} file=m.onnx,line=1,title=pwlint (PW001)::msg\n"


def test_github_escapes_data_and_properties():
    path = "dir,with:odd%name\r\n.onnx"
    message = "50% smaller: a, b\r\nnext"
    result = LintResult(files=[FileResult(path=path, findings=[finding("PW001", message, Severity.WARNING, path=path)])])
    line = render(GithubReporter(), result)
    assert line == (
        "::warning file=dir%2Cwith%3Aodd%25name%0D%0A.onnx,line=1,title=pwlint (PW001)"
        "::50%25 smaller: a, b%0D%0Anext\n"
    )
    match = GITHUB_LINE.match(line.rstrip("\n"))
    assert match
    # unescaping gives back exactly what was escaped (% last, as GitHub's runner does)
    def unescape(value):
        for escaped, raw in (("%0D", "\r"), ("%0A", "\n"), ("%3A", ":"), ("%2C", ","), ("%25", "%")):
            value = value.replace(escaped, raw)
        return value
    assert unescape(match["file"]) == path
    assert unescape(match["message"]) == message


def test_github_nothing_for_a_clean_run():
    assert render(GithubReporter(), LintResult(files=[FileResult(path="m.onnx")])) == ""


# junit ----------------------------------------------------------------------------------

def test_junit_is_xml_with_one_testcase_per_model():
    root = ET.fromstring(render(JunitReporter(), sample()))
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    suite = suites[0]
    assert suite.get("name") == "pwlint"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["models/m.onnx", "clean.onnx", "lenient.onnx", "broken.onnx"]
    assert {c.get("classname") for c in cases} == {"pwlint"}
    # counts agree with the testcases
    assert suite.get("tests") == str(len(cases)) == "4"
    assert suite.get("failures") == str(sum(c.find("failure") is not None for c in cases)) == "1"
    assert suite.get("errors") == str(sum(c.find("error") is not None for c in cases)) == "1"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "1", "1")


def test_junit_failure_lists_failing_findings():
    cases = {c.get("name"): c for c in ET.fromstring(render(JunitReporter(), sample())).iter("testcase")}
    failures = cases["models/m.onnx"].findall("failure")
    assert len(failures) == 1
    failure = failures[0]
    # fail-on warning: PW001 (warning) and PW002 (error) fail, PW003 (info) does not
    assert failure.get("message") == "2 findings"
    assert failure.get("type") == "pwlint"
    lines = failure.text.splitlines()
    assert lines == ["PW001 Flatten 'flatten' feeds dense layer 'fc'", "PW002 100% of it: odd, really second line"]
    assert "PW003" not in failure.text
    assert "PW003 no normalisation after 'conv'" in cases["models/m.onnx"].find("system-out").text


def test_junit_clean_model_and_findings_below_fail_on_pass():
    cases = {c.get("name"): c for c in ET.fromstring(render(JunitReporter(), sample())).iter("testcase")}
    clean = cases["clean.onnx"]
    assert clean.find("failure") is None and clean.find("error") is None and len(clean) == 0
    lenient = cases["lenient.onnx"]  # a warning under fail-on error
    assert lenient.find("failure") is None and lenient.find("error") is None
    assert "PW004" in lenient.find("system-out").text


def test_junit_unreadable_file_is_an_error():
    cases = {c.get("name"): c for c in ET.fromstring(render(JunitReporter(), sample())).iter("testcase")}
    broken = cases["broken.onnx"]
    assert broken.find("failure") is None
    error = broken.find("error")
    assert error is not None
    assert error.get("message") == "broken.onnx: not an ONNX model: truncated, at byte 12"


def test_junit_survives_characters_xml_cannot_hold():
    result = LintResult(files=[FileResult(path="a<&>\x01.onnx", findings=[
        finding("PW001", "bad \x00 byte & <tag>", Severity.ERROR, path="a<&>\x01.onnx"),
    ])])
    case = ET.fromstring(render(JunitReporter(), result)).find("testsuite/testcase")
    assert case.get("name").startswith("a<&>")
    assert "& <tag>" in case.find("failure").text


# concise --------------------------------------------------------------------------------

def test_concise_one_line_per_finding():
    out = render(ConciseReporter(), sample())
    lines = out.splitlines()
    assert len(lines) == 4  # the unreadable file is not printed, and there is no summary
    matches = [CONCISE_LINE.match(line) for line in lines]
    assert all(matches), lines
    assert [(m["path"], m["node"], m["code"]) for m in matches] == [
        ("models/m.onnx", "flatten", "PW001"),
        ("models/m.onnx", "conv", "PW002"),
        ("models/m.onnx", "-", "PW003"),
        ("lenient.onnx", "c", "PW004"),
    ]
    assert lines[0] == "models/m.onnx:flatten: PW001 Flatten 'flatten' feeds dense layer 'fc'"
    assert lines[1] == "models/m.onnx:conv: PW002 100% of it: odd, really second line"
    assert "broken.onnx" not in out


# through the CLI ------------------------------------------------------------------------

@pytest.fixture
def models(cnn_file):
    """A model with PW001 and PW004 (flatten head, conv bias before BatchNorm) and a clean one."""
    return cnn_file("bad.onnx"), cnn_file("good.onnx", head="gap", conv_bias=False)


def test_cli_github(models):
    bad, good = models
    run = run_inprocess("check", str(bad), str(good), "--format", "github")
    assert run.code == 1, run.err
    matches = [GITHUB_LINE.match(line) for line in run.out.splitlines()]
    assert matches and all(matches), run.out
    assert {(m["command"], m["title"]) for m in matches} == {("warning", "pwlint (PW001)"), ("warning", "pwlint (PW004)")}
    assert all(m["file"] == str(bad) for m in matches)
    pw001 = next(m for m in matches if m["title"] == "pwlint (PW001)")
    assert "flatten" in pw001["message"] and "fc" in pw001["message"]


def test_cli_junit(models, tmp_path):
    bad, good = models
    missing = tmp_path / "missing.onnx"
    run = run_inprocess("check", str(bad), str(good), str(missing), "--format", "junit")
    assert run.code == 2  # an unreadable file
    suite = ET.fromstring(run.out).find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "1")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {str(bad), str(good), str(missing)}
    failure = cases[str(bad)].find("failure")
    assert "PW001" in failure.text and "PW004" in failure.text
    assert cases[str(good)].find("failure") is None
    assert cases[str(missing)].find("error") is not None

    # under --fail-on error the warnings are not failures
    run = run_inprocess("check", str(bad), "--format", "junit", "--fail-on", "error")
    assert run.code == 0, run.err
    suite = ET.fromstring(run.out).find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("1", "0", "0")
    assert "PW001" in suite.find("testcase/system-out").text


def test_cli_concise(models):
    bad, good = models
    run = run_inprocess("check", str(bad), str(good), "--format", "concise")
    assert run.code == 1, run.err
    matches = [CONCISE_LINE.match(line) for line in run.out.splitlines()]
    assert matches and all(matches), run.out
    assert {(m["path"], m["node"], m["code"]) for m in matches} == {(str(bad), "flatten", "PW001"), (str(bad), "conv", "PW004")}


def test_cli_github_annotates_the_path_github_matches_when_linting_dot(models, monkeypatch):
    """`pwlint check .` (what the GitHub Action runs by default) finds `./bad.onnx`; GitHub
    matches annotations against repository paths, so the file is written `bad.onnx`."""
    bad, _ = models
    monkeypatch.chdir(bad.parent)
    run = run_inprocess("check", ".", "--format", "github")
    files = {GITHUB_LINE.match(line)["file"] for line in run.out.splitlines()}
    assert bad.name in files and not any(f.startswith("./") for f in files), run.out
