"""Plugins: a third-party rule installed outside pwlint, found through a real
``pwlint`` entry point, behaves like a built-in one; and the rules' own
documentation and tests are checked the way datasette checks its hooks."""

from __future__ import annotations

import ast
import csv
import importlib
import inspect
import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pwlint import contracts
from pwlint.findings import Severity
from pwlint.plugins import DEFAULT_PLUGINS
from pwlint.rule import DOC_SECTIONS, Rule
from tests.conftest import Run, findings, one_line_error, run_inprocess

TESTS = Path(__file__).parent

THIRDPARTY = '''
"""A pwlint plugin that lives outside pwlint: reports every dense layer."""

from pwlint.findings import Finding, Severity
from pwlint.hookspecs import hookimpl
from pwlint.rule import Rule, RuleOptions

DOC = """TP001 every-dense-layer: reports every dense layer.

## What it does
Reports each fully-connected layer.

## Why is this bad
It is a test rule.

## Example
```
Flatten -> Gemm
```

## Use instead
```
GlobalAveragePool -> Conv 1x1
```
"""


class Options(RuleOptions):
    label: str = "dense"


def check(graph, options):
    for layer in graph.layers("dense"):
        yield Finding(message=f"third-party rule saw {options.label} layer {layer.name}", nodes=[layer.name])


RULE = Rule(code="TP001", name="every-dense-layer", severity=Severity.WARNING, check=check, doc=DOC, options=Options)


@hookimpl
def pwlint_register_rules(register):
    register(RULE)
'''


def install_plugin(folder: Path, module: str, source: str, entry_point: str | None = None) -> None:
    """Install ``module`` the way pip would leave it: the module and its .dist-info
    with a ``[pwlint]`` entry point, found on PYTHONPATH."""
    (folder / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    dist_info = folder / f"{module}-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[pwlint]\n{entry_point or module} = {module}\n")


def run_with_plugins(site: Path, *args: str, cwd: Path | None = None, autoload: bool = True) -> Run:
    """``python -m pwlint ARGS`` with ``site`` on PYTHONPATH and plugin autoloading as a user has it."""
    env = {k: v for k, v in os.environ.items() if k != "PWLINT_DISABLE_PLUGIN_AUTOLOAD"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    if not autoload:
        env["PWLINT_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "pwlint", *args], capture_output=True, text=True,
        cwd=cwd or site, env=env, timeout=120,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def site(tmp_path):
    folder = tmp_path / "site"
    folder.mkdir()
    install_plugin(folder, "thirdparty_rules", THIRDPARTY, entry_point="thirdparty")
    return folder


@pytest.fixture
def model(cnn_file):
    """Flatten + Gemm head (PW001) with a conv bias before BatchNorm (PW004); one dense layer, "fc"."""
    return cnn_file("models/m.onnx", head="flatten")


def found(run: Run) -> list[tuple[str, list[str]]]:
    assert run.code in (0, 1), run.err
    return sorted((f["code"], f["nodes"]) for f in json.loads(run.out)["findings"])


# a third-party rule behaves like a built-in ---------------------------------------------

def test_thirdparty_rule_runs(site, model):
    run = run_with_plugins(site, str(model), "--format", "json")
    assert run.code == 1, run.err
    report = json.loads(run.out)
    [tp] = [f for f in report["findings"] if f["code"] == "TP001"]
    assert tp["rule"] == "every-dense-layer"
    assert tp["severity"] == "warning"
    assert tp["nodes"] == ["fc"]
    assert tp["path"] == str(model)
    # the built-in rules still run beside it
    assert {f["code"] for f in report["findings"]} == {"PW001", "PW004", "TP001"}


def test_thirdparty_rule_in_text_output(site, model):
    run = run_with_plugins(site, str(model))
    assert run.code == 1, run.err
    assert f"{model}: TP001 (warning) third-party rule saw dense layer fc" in run.out


@pytest.mark.parametrize("selector", ["TP001", "TP", "every-dense-layer"])
def test_thirdparty_rule_can_be_selected(site, model, selector):
    run = run_with_plugins(site, str(model), "--select", selector, "--format", "json")
    assert found(run) == [("TP001", ["fc"])]


def test_thirdparty_rule_can_be_ignored(site, model):
    run = run_with_plugins(site, str(model), "--ignore", "TP001", "--format", "json")
    assert [code for code, _ in found(run)] == ["PW001", "PW004"]


def test_thirdparty_rule_ignored_and_configured_in_config(site, model, tmp_path):
    config = tmp_path / "pwlint.toml"
    config.write_text('ignore = ["TP001"]\n')
    run = run_with_plugins(site, str(model), "--format", "json")
    assert [code for code, _ in found(run)] == ["PW001", "PW004"]

    config.write_text('select = ["TP001"]\n[rules.TP001]\nlabel = "classifier"\n')
    run = run_with_plugins(site, str(model))
    assert run.code == 1, run.err
    assert "third-party rule saw classifier layer fc" in run.out

    config.write_text('[rules.TP001]\nlable = "typo"\n')
    line = one_line_error(run_with_plugins(site, str(model)))
    assert "lable" in line


def test_thirdparty_rule_documentation(site):
    run = run_with_plugins(site, "rule", "TP001")
    assert run.code == 0, run.err
    for section in DOC_SECTIONS:
        assert section in run.out
    assert "label" in run.out

    run = run_with_plugins(site, "rules")
    assert run.code == 0, run.err
    assert [line.split()[0] for line in run.out.splitlines() if line.strip()] == ["PW001", "PW002", "PW003", "PW004", "PW005", "PW006", "PW007", "TP001"]


def test_plugins_lists_the_thirdparty_plugin(site):
    run = run_with_plugins(site, "plugins")
    assert run.code == 0, run.err
    listed = dict(line.split(": ", 1) for line in run.out.splitlines() if ": " in line)
    assert "TP001" in listed["thirdparty"]
    # the built-ins are listed the same way
    assert all(code in listed["pwlint_rules"] for code in ("PW001", "PW002", "PW003", "PW004"))
    assert "TP001" not in listed["pwlint_rules"]


def test_autoload_can_be_disabled(site, model):
    run = run_with_plugins(site, str(model), "--format", "json", autoload=False)
    assert "TP001" not in [code for code, _ in found(run)]
    assert "thirdparty" not in run_with_plugins(site, "plugins", autoload=False).out
    line = one_line_error(run_with_plugins(site, str(model), "--select", "TP001", autoload=False))
    assert "TP001" in line


# broken plugins: exit 2, one line ----------------------------------------------------------

DUPLICATE = '''
from pwlint.hookspecs import hookimpl
from pwlint.rule import Rule
from pwlint.findings import Severity
from pwlint_rules.flatten_dense_head import RULE as BUILTIN


@hookimpl
def pwlint_register_rules(register):
    register(Rule(code="PW001", name="my-own-head-rule", severity=Severity.WARNING, check=BUILTIN.check, doc=BUILTIN.doc))
'''


def test_plugin_registering_an_existing_code(tmp_path, model):
    site = tmp_path / "dup"
    site.mkdir()
    install_plugin(site, "dup_rules", DUPLICATE, entry_point="dup")
    for args in ([str(model)], ["rules"]):
        line = one_line_error(run_with_plugins(site, *args))
        assert "PW001" in line
        # the clashing plugin is named, whichever of the two registered first
        assert "dup" in line


def test_two_plugins_with_the_same_code(site, tmp_path, model):
    install_plugin(site, "copycat_rules", THIRDPARTY.replace("every-dense-layer", "copycat"), entry_point="copycat")
    line = one_line_error(run_with_plugins(site, str(model)))
    assert "TP001" in line


MISSING_SECTION = THIRDPARTY.replace("## Use instead", "## Instead")


def test_plugin_rule_without_a_doc_section(tmp_path, model):
    site = tmp_path / "nodoc"
    site.mkdir()
    install_plugin(site, "nodoc_rules", MISSING_SECTION, entry_point="nodoc")
    line = one_line_error(run_with_plugins(site, str(model)))
    assert "Use instead" in line


def test_plugin_that_fails_to_import(tmp_path, model):
    site = tmp_path / "broken"
    site.mkdir()
    install_plugin(site, "broken_rules", "import module_that_does_not_exist\n", entry_point="broken")
    line = one_line_error(run_with_plugins(site, str(model)))
    assert "module_that_does_not_exist" in line


def test_plugin_with_a_misspelled_hook(tmp_path, model):
    site = tmp_path / "typo"
    site.mkdir()
    source = THIRDPARTY.replace("def pwlint_register_rules(register)", "def pwlint_register_rule(register)")
    install_plugin(site, "typo_rules", source, entry_point="typo")
    line = one_line_error(run_with_plugins(site, str(model)))
    assert "pwlint_register_rule" in line
    assert "internal error" not in line


# what every rule must have -------------------------------------------------------------

FULL_DOC = """XX001 sample-rule: a sample.

## What it does
Something.

## Why is this bad
Because.

## Example
Bad.

## Use instead
Good.
"""


def _check(graph, options):
    return iter(())


def test_a_rule_with_every_section_is_accepted():
    rule = Rule(code="XX001", name="sample-rule", severity=Severity.INFO, check=_check, doc=FULL_DOC)
    assert rule.summary == "a sample."


@pytest.mark.parametrize("section", DOC_SECTIONS)
def test_a_rule_missing_a_doc_section_is_rejected(section):
    doc = FULL_DOC.replace(f"## {section}\n", "")
    with pytest.raises(ValueError, match=section):
        Rule(code="XX001", name="sample-rule", severity=Severity.INFO, check=_check, doc=doc)


def test_a_rule_without_a_docstring_is_rejected():
    with pytest.raises(ValueError):
        Rule(code="XX001", name="sample-rule", severity=Severity.INFO, check=_check, doc=None)


@pytest.mark.parametrize("code, name", [("pw001", "sample-rule"), ("PW1", "sample-rule"), ("XX001", "Sample_Rule")])
def test_badly_named_rules_are_rejected(code, name):
    with pytest.raises(ValueError):
        Rule(code=code, name=name, severity=Severity.INFO, check=_check, doc=FULL_DOC)


def _builtin_rules():
    from pwlint_rules import BUILTIN_RULES

    return BUILTIN_RULES


@pytest.mark.parametrize("rule", _builtin_rules(), ids=lambda rule: rule.code)
def test_builtin_rule_documents_every_section(rule):
    from pwlint.rule import doc_sections

    sections = doc_sections(rule.doc)
    for section in DOC_SECTIONS:
        assert sections.get(section), f"{rule.code} has no text under '## {section}'"
    assert rule.doc.strip().startswith(f"{rule.code} {rule.name}:"), "the title line names the code and the rule"


@pytest.mark.parametrize("rule", _builtin_rules(), ids=lambda rule: rule.code)
def test_builtin_rule_has_a_test_file(rule):
    module = rule.check.__module__.rpartition(".")[2]
    test_file = TESTS / "rules" / f"test_{module}.py"
    assert test_file.is_file(), f"rule {rule.code} ({module}.py) has no test file {test_file.relative_to(TESTS.parent)}"


def test_builtin_rules_are_registered_through_the_hook():
    run = run_inprocess("plugins")
    assert run.code == 0
    listed = dict(line.split(": ", 1) for line in run.out.splitlines())
    assert set(listed["pwlint_rules"].split(", ")) == {rule.code for rule in _builtin_rules()}
    assert set(listed["pwlint.formats.onnx.plugin"].split(", ")) == {"onnx loader", "onnx fixes"}
    assert listed["pwlint.reporters.text"] == "text format"
    assert listed["pwlint.reporters.json"] == "json format"


# third-party loaders: matched by suffix, or by content when they can sniff ----------------

TOY_LOADERS = '''
"""Two loaders for a toy format: one that goes by suffix only, one that sniffs content."""

from pwlint.hookspecs import hookimpl
from pwlint.ir import Layer, ModelGraph


def toy_graph(path, fmt):
    graph = ModelGraph(path, fmt)
    graph.add_layer(Layer("x", "input", "input", output_shapes=[(1, 8)]))
    graph.add_layer(Layer("fc", "dense", "ToyDense", attrs={"in_features": 8, "out_features": 2}, params=18,
                          input_shapes=[(1, 8)], output_shapes=[(1, 2)]))
    graph.add_layer(Layer("y", "output", "output", input_shapes=[(1, 2)]))
    graph.connect("x", "fc", "x", (1, 8), data=True)
    graph.connect("fc", "y", "fc", (1, 2), data=True)
    return graph


class BySuffix:
    name = "toy"
    suffixes = (".toy",)

    def load(self, path):
        return toy_graph(path, self.name)


class ByContent:
    name = "toymagic"
    suffixes = (".toymagic",)

    def sniff(self, path, head):
        if head.startswith(b"BROKEN"):
            raise RuntimeError("a bug in the plugin's sniff")
        return head.startswith(b"TOYMAGIC")

    def load(self, path):
        return toy_graph(path, self.name)


@hookimpl
def pwlint_register_loaders(register):
    register(BySuffix())
    register(ByContent())
'''


@pytest.fixture
def toy_site(tmp_path):
    folder = tmp_path / "toysite"
    folder.mkdir()
    install_plugin(folder, "toy_loaders", TOY_LOADERS, entry_point="toy")
    return folder


def formats_read(site: Path, *paths: Path) -> dict[str, tuple]:
    run = run_with_plugins(site, *map(str, paths), "--format", "json")
    assert "Traceback" not in run.err, run.err
    return {Path(f["path"]).name: (f["format"], f["error"]) for f in json.loads(run.out)["files"]}


def test_loader_without_sniff_keeps_its_suffix_even_for_onnx_content(toy_site, tmp_path, cnn_file):
    """A plugin that cannot look at content owns its suffix: no built-in guess takes it."""
    toy = tmp_path / "model.toy"
    toy.write_bytes(cnn_file("m.onnx").read_bytes())
    assert formats_read(toy_site, toy) == {"model.toy": ("toy", None)}


def test_loader_with_sniff_is_chosen_by_content_whatever_the_name(toy_site, tmp_path, cnn_file):
    named_onnx = tmp_path / "model.onnx"
    named_onnx.write_bytes(b"TOYMAGIC v1\n")
    odd = tmp_path / "export.dat"
    odd.write_bytes(b"TOYMAGIC v1\n")
    real_onnx = cnn_file("real.onnx")
    assert formats_read(toy_site, named_onnx, odd, real_onnx) == {
        "model.onnx": ("toymagic", None), "export.dat": ("toymagic", None), "real.onnx": ("onnx", None),
    }


def test_a_sniff_that_raises_counts_as_no_and_the_suffix_still_routes(toy_site, tmp_path):
    broken = tmp_path / "model.toymagic"
    broken.write_bytes(b"BROKEN but named for the plugin\n")
    assert formats_read(toy_site, broken) == {"model.toymagic": ("toymagic", None)}


# a third-party format, end to end: its loader, a reporter and a fix backend ---------------
#
# "mine" is a toy JSON model format: a list of layers and the edges between them. The
# plugin reads it, writes reports in its own format and rewrites its files for --fix,
# registered only through its entry point, the way an installed package would be.

MINE_PLUGIN = '''
"""A third-party format: JSON layers and edges (".mine"), its reporter and its fix backend."""

import json
import os
import shutil

import numpy as np

from pwlint.errors import FixNotApplicable
from pwlint.hookspecs import hookimpl
from pwlint.ir import Layer, ModelGraph


def graph_of(document, path):
    graph = ModelGraph(path, "mine")
    for spec in document["layers"]:
        graph.add_layer(Layer(
            spec["name"], spec["kind"], spec["op"], attrs=dict(spec.get("attrs", {})), params=spec.get("params", 0),
            input_shapes=[tuple(s) for s in spec.get("in", [])], output_shapes=[tuple(s) for s in spec.get("out", [])],
            layout=spec.get("layout"), understood=spec.get("understood", True),
        ))
    for producer, consumer, shape in document["edges"]:
        graph.connect(producer, consumer, producer, tuple(shape), data=True)
    return graph


class MineLoader:
    name = "mine"
    suffixes = (".mine",)

    def load(self, path):
        with open(path) as f:
            return graph_of(json.load(f), path)


class MineReporter:
    name = "myformat"

    def report(self, result, stream):
        for finding in result.findings:
            stream.write(f"MINE|{finding.code}|{'+'.join(finding.nodes)}\\n")


class Session:
    """Edits the JSON document in memory; each checkpoint is a file beside the model."""

    def __init__(self, path):
        self.path = path
        with open(path) as f:
            self.document = json.load(f)
        self.saved = json.dumps(self.document)
        self.last_good = path
        self.count = 0

    def graph(self):
        return graph_of(self.document, self.path)

    def apply(self, fix):
        if fix.action != "convolutionalise-head":
            raise FixNotApplicable(f"the mine backend does not do {fix.action}")
        (dense,) = [s for s in self.document["layers"] if s["name"] == fix.plan["denses"][0]]
        side = fix.plan["positions"]
        dense.update(kind="conv", op="MineConv", attrs={
            "kernel": side, "in_channels": fix.plan["channels"], "out_channels": dense["attrs"]["out_features"],
            "groups": 1, "bias": True,
        })
        return "rewritten by the mine backend"

    def checkpoint(self):
        self.count += 1
        candidate = f"{self.path}.candidate{self.count}"
        with open(candidate, "w") as f:
            json.dump(self.document, f)
        return candidate

    def accept(self, candidate):
        self.last_good, self.saved = candidate, json.dumps(self.document)

    def revert(self):
        self.document = json.loads(self.saved)

    def commit(self, target):
        shutil.copyfile(self.last_good, target)

    def close(self):
        for index in range(1, self.count + 1):
            if os.path.exists(f"{self.path}.candidate{index}"):
                os.remove(f"{self.path}.candidate{index}")

    def file_size(self, file):
        return os.path.getsize(file)


class MineBackend:
    name = "mine"
    runtime = "mine"

    def open(self, path):
        with open(os.environ["MINE_CALLS"], "a") as log:
            log.write(f"open {path}\\n")
        return Session(path)

    def run(self, model_file, feeds=None):
        feeds = feeds or {"x": np.ones((1, 3, 8, 8), np.float32)}
        return feeds, {"y": np.full((1, 10), 0.5, np.float32)}


@hookimpl
def pwlint_register_loaders(register):
    register(MineLoader())


@hookimpl
def pwlint_register_reporters(register):
    register(MineReporter())


@hookimpl
def pwlint_register_backends(register):
    register(MineBackend())
'''

MINE_CHANNELS, MINE_SIDE, MINE_CLASSES = 4, 8, 10


def mine_model(folder: Path, name: str = "m.mine", *, side: int = MINE_SIDE, understood: bool = True) -> Path:
    """A .mine file: input -> 3x3 conv (4 channels) -> flatten -> dense(10) -> output,
    a Flatten + Dense head (PW001) on a side x side map."""
    c, k = MINE_CHANNELS, MINE_CLASSES
    fmap, flat = [1, c, side, side], [1, c * side * side]
    layers = [
        {"name": "x", "kind": "input", "op": "input", "out": [[1, 3, side, side]]},
        {"name": "conv", "kind": "conv", "op": "MineConv", "in": [[1, 3, side, side]], "out": [fmap], "layout": "NCHW",
         "params": 3 * 9 * c + c, "attrs": {"kernel": [3, 3], "in_channels": 3, "out_channels": c, "groups": 1, "bias": True}},
        {"name": "flatten", "kind": "flatten", "op": "MineFlatten", "in": [fmap], "out": [flat]},
        {"name": "fc", "kind": "dense", "op": "MineDense", "in": [flat], "out": [[1, k]], "params": flat[1] * k + k,
         "attrs": {"in_features": flat[1], "out_features": k, "bias": True}},
        {"name": "y", "kind": "output", "op": "output", "in": [[1, k]]},
    ]
    if not understood:
        layers = [dict(spec, kind="other", op="MineMystery", understood=False) if spec["kind"] not in ("input", "output")
                  else spec for spec in layers]
    document = {"layers": layers, "edges": [["x", "conv", [1, 3, side, side]], ["conv", "flatten", fmap],
                                            ["flatten", "fc", flat], ["fc", "y", [1, k]]]}
    path = folder / name
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def mine_site(tmp_path):
    folder = tmp_path / "minesite"
    folder.mkdir()
    install_plugin(folder, "mine_format", MINE_PLUGIN, entry_point="mine")
    return folder


def test_thirdparty_format_is_linted(mine_site, tmp_path):
    path = mine_model(tmp_path)
    run = run_with_plugins(mine_site, str(path), "--format", "json")
    assert run.code == 1, run.err
    report = json.loads(run.out)
    assert [(f["format"], f["error"]) for f in report["files"]] == [("mine", None)]
    (finding,) = findings(report, "PW001")
    assert finding["nodes"] == ["flatten", "fc"]
    # coverage is measured for a plugin's graph as for a built-in one: all three layers known
    coverage = report["files"][0]["coverage"]
    assert coverage["layers"] == 3 and coverage["recognised"] == 3, coverage


@pytest.mark.parametrize("side", [2**40, 2**41])
def test_thirdparty_loader_with_an_impossible_tensor_is_refused(mine_site, tmp_path, side):
    """The engine's size check covers every loader: a plugin's 2**40 x 2**40 map is not a model."""
    path = mine_model(tmp_path, side=side)
    line = one_line_error(run_with_plugins(mine_site, str(path)))
    assert line.startswith(f"pwlint: error: {path}: layer ")
    assert "not a real model" in line and "internal error" not in line


def test_thirdparty_graph_with_no_recognised_layer_is_refused(mine_site, tmp_path):
    path = mine_model(tmp_path, understood=False)
    line = one_line_error(run_with_plugins(mine_site, str(path)))
    assert line.startswith(f"pwlint: error: {path}: ")
    assert "cannot check this model" in line and "MineMystery" in line


def test_thirdparty_reporter_writes_the_report(mine_site, tmp_path, cnn_file):
    onnx_model = cnn_file("m.onnx")
    run = run_with_plugins(
        mine_site, str(mine_model(tmp_path)), str(onnx_model), "--format", "myformat", "--select", "PW001,PW004",
    )
    assert run.code == 1, run.err
    # the mine model has a flatten head; the ONNX one has it too, and a conv bias before BatchNorm
    assert sorted(run.out.splitlines()) == ["MINE|PW001|flatten+fc", "MINE|PW001|flatten+fc", "MINE|PW004|conv+bn"]


def test_thirdparty_backend_fixes_its_format(mine_site, tmp_path):
    path = mine_model(tmp_path)
    calls = tmp_path / "calls.log"
    env_run = run_with_plugins_env(mine_site, {"MINE_CALLS": str(calls)}, str(path), "--fix", "--select", "PW001", "--format", "json")
    assert env_run.code == 0, (env_run.out, env_run.err)
    assert calls.read_text().splitlines() == [f"open {path}"]
    report = json.loads(env_run.out)
    (applied,) = report["files"][0]["fix"]["applied"]
    assert (applied["code"], applied["note"]) == ("PW001", "rewritten by the mine backend")
    written = json.loads(path.read_text())
    (fc,) = [spec for spec in written["layers"] if spec["name"] == "fc"]
    assert (fc["kind"], fc["attrs"]["kernel"]) == ("conv", [MINE_SIDE, MINE_SIDE])
    assert sorted(p.name for p in tmp_path.iterdir() if "candidate" in p.name) == []


def run_with_plugins_env(site: Path, env: dict, *args: str) -> Run:
    """:func:`run_with_plugins` with extra environment variables."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        return run_with_plugins(site, *args)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_a_bug_in_a_thirdparty_loader_is_an_internal_error_to_report(mine_site, tmp_path):
    """An exception the loader did not mean (here KeyError, for a file without "edges") is
    one line and exit 2 like a refusal, but it says it is a bug and asks for a report."""
    path = tmp_path / "broken.mine"
    path.write_text(json.dumps({"layers": []}))
    line = one_line_error(run_with_plugins(mine_site, str(path)))
    assert line == (
        f"pwlint: error: {path}: internal error while reading the mine file (KeyError: 'edges'); "
        "please report it with the file (PWLINT_DEBUG=1 shows the traceback)"
    )


# written contracts: every hook, built-in plugin and Protocol member is documented --------
#
# As datasette's test_plugin_hooks_are_documented: the contracts a plugin author reads
# (pwlint/hookspecs.py, pwlint/contracts.py, the README's "## Plugins") cannot fall behind
# the code without a test failing.

README = (TESTS.parent / "README.md").read_text(encoding="utf-8")


def _plugins_section() -> str:
    match = re.search(r"^## Plugins\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, "README has no '## Plugins' section"
    return match.group(1)


def _hookspecs() -> dict:
    from pwlint import hookspecs

    return {name: value for name, value in vars(hookspecs).items() if name.startswith("pwlint_")}


def test_the_hookspecs_module_declares_every_hook_the_manager_knows():
    from pwlint.plugins import make_plugin_manager

    pm = make_plugin_manager(autoload=False)
    assert {name for name in vars(pm.hook) if name.startswith("pwlint_")} == set(_hookspecs())


@pytest.mark.parametrize("hook", sorted(_hookspecs()))
def test_every_hook_is_documented(hook):
    """The spec says what ``register`` takes, and the README's plugin section names the hook."""
    doc = inspect.getdoc(_hookspecs()[hook]) or ""
    assert "register(" in doc, f"{hook} has no docstring saying what it registers"
    assert f"`{hook}`" in _plugins_section(), f"README's '## Plugins' does not mention {hook}"


@pytest.mark.parametrize("module_name", DEFAULT_PLUGINS)
def test_every_builtin_plugin_module_has_a_docstring(module_name):
    module = importlib.import_module(module_name)
    assert (module.__doc__ or "").strip(), f"built-in plugin {module_name} has no module docstring"


def _protocol_members() -> list[tuple[str, str, str | None]]:
    """(protocol, member, its docstring) for every member each Protocol in
    pwlint.contracts declares itself: a method's docstring, or for an attribute the
    string literal right after its annotation (as Sphinx reads attribute docstrings)."""
    members = []
    for node in ast.parse(Path(contracts.__file__).read_text(encoding="utf-8")).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for index, statement in enumerate(node.body):
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                after = node.body[index + 1] if index + 1 < len(node.body) else None
                documented = (
                    isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)
                )
                members.append((node.name, statement.target.id, after.value.value if documented else None))
            elif isinstance(statement, ast.FunctionDef):
                members.append((node.name, statement.name, ast.get_docstring(statement)))
    return members


PROTOCOLS = [
    contracts.Loader, contracts.SniffingLoader, contracts.DiscoveringLoader, contracts.Reporter,
    contracts.FixBackend, contracts.DescribedBackend, contracts.FixSession,
]


def _own_members(protocol) -> set[str]:
    own = vars(protocol)
    return set(own.get("__annotations__", {})) | {
        name for name, value in own.items() if callable(value) and not name.startswith("_")
    }


def test_the_contracts_are_the_protocols_listed_here():
    """Guards the lists below: a Protocol added to pwlint.contracts is checked too."""
    declared = {name for name in contracts.__all__ if getattr(getattr(contracts, name), "_is_protocol", False)}
    assert declared == {protocol.__name__ for protocol in PROTOCOLS}
    parsed = {(protocol, member) for protocol, member, _ in _protocol_members()}
    assert parsed == {(p.__name__, member) for p in PROTOCOLS for member in _own_members(p)}


@pytest.mark.parametrize("protocol, member, doc", _protocol_members(), ids=lambda v: v if isinstance(v, str) and " " not in v else "")
def test_every_protocol_member_is_documented(protocol, member, doc):
    assert doc and doc.strip(), f"pwlint.contracts.{protocol}.{member} has no docstring"
    assert (inspect.getdoc(getattr(contracts, protocol)) or "").strip(), f"{protocol} has no docstring"


# the built-ins satisfy their contracts ---------------------------------------------------


def assert_fits(obj, protocol) -> None:
    """``obj`` has every member of ``protocol``, and each method takes the protocol's
    parameters, by name and in order; any extra parameter has a default."""
    assert isinstance(obj, protocol), f"{obj!r} is not a {protocol.__name__}"
    for name in sorted(_members_with_bases(protocol)):
        wanted = getattr(protocol, name, None)
        if not callable(wanted):
            continue
        expected = list(inspect.signature(wanted).parameters.values())[1:]  # without self
        actual = list(inspect.signature(getattr(obj, name)).parameters.values())
        where = f"{type(obj).__name__}.{name}{inspect.signature(getattr(obj, name))}"
        assert [p.name for p in actual[: len(expected)]] == [p.name for p in expected], where
        assert all(p.default is not p.empty for p in actual[len(expected):]), where
        for want, have in zip(expected, actual):
            assert have.kind in (have.POSITIONAL_ONLY, have.POSITIONAL_OR_KEYWORD), where
            if want.default is not want.empty:  # the core may leave it out
                assert have.default is not have.empty, where


def _members_with_bases(protocol) -> set[str]:
    return set().union(*(_own_members(base) for base in protocol.__mro__ if base in PROTOCOLS))


def _registry():
    from pwlint.plugins import collect, make_plugin_manager

    return collect(make_plugin_manager(autoload=False))


def test_builtin_loaders_satisfy_the_loader_protocol():
    loaders = _registry().loaders
    assert sorted(loaders) == ["keras", "onnx", "torch"]
    for loader in loaders.values():
        # every built-in format is recognised by its content, not only its name
        assert_fits(loader, contracts.SniffingLoader)
        if isinstance(loader, contracts.DiscoveringLoader):
            assert_fits(loader, contracts.DiscoveringLoader)
            assert set(loader.discovered) <= set(loader.suffixes), loader.name
    assert isinstance(loaders["torch"], contracts.DiscoveringLoader)


def test_builtin_reporters_satisfy_the_reporter_protocol():
    reporters = _registry().reporters
    assert sorted(reporters) == ["concise", "github", "json", "junit", "sarif", "text"]
    for reporter in reporters.values():
        assert_fits(reporter, contracts.Reporter)


def test_builtin_backends_satisfy_the_backend_protocol():
    registry = _registry()
    assert sorted(registry.backends) == sorted(registry.loaders)  # every built-in format can be fixed
    for backend in registry.backends.values():
        assert_fits(backend, contracts.DescribedBackend)
        # the registered proxy has the contract itself, as Python 3.12's getattr_static
        # protocol check sees it, and says what the backend it stands for says
        for member in ("name", "checker", "runtime", "open", "run"):
            inspect.getattr_static(backend, member)
        real = backend.backend()
        assert (backend.name, backend.checker, backend.runtime) == (real.name, real.checker, real.runtime)


def _keras_model(folder: Path) -> Path:
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="fc")])
    model.save(folder / "m.keras")
    return folder / "m.keras"


def _pt2_model(folder: Path) -> Path:
    import torch

    program = torch.export.export(torch.nn.Sequential(torch.nn.Linear(4, 2)), (torch.randn(1, 4),))
    torch.export.save(program, str(folder / "m.pt2"))
    return folder / "m.pt2"


@pytest.mark.parametrize("fmt", ["onnx", "keras", "torch"])
def test_builtin_fix_sessions_satisfy_the_session_protocol(fmt, tmp_path, cnn_file):
    make = {"onnx": lambda: cnn_file(), "keras": lambda: _keras_model(tmp_path), "torch": lambda: _pt2_model(tmp_path)}
    path = make[fmt]()
    session = _registry().backends[fmt].open(str(path))
    try:
        assert_fits(session, contracts.FixSession)
        assert Path(session.path) == path and Path(session.last_good) == path  # nothing accepted yet
        assert session.file_size(session.path) == path.stat().st_size
    finally:
        session.close()


def test_the_protocols_tell_a_missing_member():
    """The isinstance checks above can fail: a reporter without ``report`` is no Reporter."""

    class NameOnly:
        name = "half"

    assert not isinstance(NameOnly(), contracts.Reporter)
    with pytest.raises(AssertionError, match="stream"):
        assert_fits(type("Reporter", (), {"name": "x", "report": lambda self, result: None})(), contracts.Reporter)


# the README's plugin examples run ---------------------------------------------------------


def _readme_example(marker: str) -> str:
    blocks = [block for block in re.findall(r"```python\n(.*?)```", _plugins_section(), re.S) if marker in block]
    assert len(blocks) == 1, f"README's '## Plugins' should have one python example with {marker!r}"
    return blocks[0]


README_RULE_DOC = '''"""XY001 grouped-pointwise: a grouped 1x1 convolution.

## What it does
Reports grouped pointwise convolutions.

## Why is this bad
An example rule.

## Example
Conv 1x1, group 2

## Use instead
Conv 1x1, group 1
"""
'''


def test_readme_rule_example_reports_a_grouped_pointwise_conv(tmp_path, onnx_text):
    site = tmp_path / "site"
    site.mkdir()
    # the README leaves the docstring out ("the docstring needs the four sections")
    install_plugin(site, "readme_rule", README_RULE_DOC + _readme_example("pwlint_register_rules"))
    model = onnx_text(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y) <float[4, 2, 1, 1] w = {{{", ".join(["0.5"] * 8)}}}>
        {{ y = Conv <group: int = 2, kernel_shape: ints = [1, 1]> (x, w) }}
    """)
    run = run_with_plugins(site, str(model), "--select", "XY001", "--format", "json")
    assert run.code == 1, run.err
    # an unnamed ONNX node is named <OpType>_<position>
    assert [(f["code"], f["message"], f["nodes"]) for f in json.loads(run.out)["findings"]] == [
        ("XY001", "grouped pointwise conv Conv_0", ["Conv_0"]),
    ]


def tiny_model(path: Path, *, mystery: bool = False) -> Path:
    """The README loader's format: input 3x8x8 -> conv 3x3 (4 channels, no bias) ->
    BatchNorm -> flatten -> dense 10, a Flatten + Dense head (PW001) and nothing else to
    report; ``mystery`` puts an unknown operator after the norm."""
    c, side, k = 4, 8, 10
    layers = [
        {"name": "x", "kind": "input", "op": "Input", "shape": [1, 3, side, side]},
        {"name": "conv", "kind": "conv", "op": "TinyConv", "shape": [1, c, side, side], "layout": "NCHW",
         "params": 3 * 9 * c + c, "attrs": {"kernel": [3, 3], "in_channels": 3, "out_channels": c, "groups": 1, "bias": False}},
        {"name": "bn", "kind": "norm", "op": "TinyBatchNorm", "shape": [1, c, side, side], "layout": "NCHW",
         "params": 2 * c, "attrs": {"norm_type": "batch"}},
    ]
    if mystery:
        layers.append({"name": "odd", "kind": "swirl", "op": "TinySwirl", "shape": [1, c, side, side]})
    layers += [
        {"name": "flatten", "kind": "flatten", "op": "TinyFlatten", "shape": [1, c * side * side]},
        {"name": "fc", "kind": "dense", "op": "TinyDense", "shape": [1, k], "params": c * side * side * k + k,
         "attrs": {"in_features": c * side * side, "out_features": k, "bias": True}},
    ]
    path.write_text(json.dumps({"tiny": 1, "layers": layers}))
    return path


@pytest.fixture
def readme_site(tmp_path):
    """The README's loader and reporter examples, each installed as its own plugin."""
    folder = tmp_path / "readme_site"
    folder.mkdir()
    install_plugin(folder, "readme_loader", _readme_example("pwlint_register_loaders"))
    install_plugin(folder, "readme_reporter", _readme_example("pwlint_register_reporters"))
    return folder


def test_readme_loader_and_reporter_examples(readme_site, tmp_path):
    # recognised by its content: the name says nothing
    model = tiny_model(tmp_path / "export.dat")
    run = run_with_plugins(readme_site, str(model), "--format", "csv")
    assert run.code == 1, run.err
    rows = list(csv.reader(io.StringIO(run.out)))
    assert rows[0] == ["path", "code", "severity", "nodes", "message"]
    assert [row[:4] for row in rows[1:]] == [[str(model), "PW001", "warning", "flatten fc"]]

    report = json.loads(run_with_plugins(readme_site, str(tiny_model(tmp_path / "m.tiny", mystery=True)),
                                         "--format", "json").out)
    (file,) = report["files"]
    assert (file["format"], file["error"]) == ("tiny", None)
    assert file["coverage"]["unknown_ops"] == {"TinySwirl": 1}

    broken = tmp_path / "broken.tiny"
    broken.write_text('{"tiny": 1}')
    line = one_line_error(run_with_plugins(readme_site, str(broken)))
    assert line == f"pwlint: error: {broken}: not a tiny model ('layers')"


def test_readme_backend_example_lists_what_a_backend_must_provide():
    namespace: dict = {}
    exec(_readme_example("class TinyBackend"), namespace)  # noqa: S102 - our own README
    backend, session = namespace["TinyBackend"](), namespace["TinySession"]("m.tiny")
    assert_fits(backend, contracts.DescribedBackend)
    assert_fits(session, contracts.FixSession)
    # nothing more than the contracts: the README shows exactly what is required
    public = lambda obj: {name for name in dir(obj) if not name.startswith("_")}  # noqa: E731
    assert public(backend) == _members_with_bases(contracts.DescribedBackend)
    assert public(session) == _members_with_bases(contracts.FixSession)
