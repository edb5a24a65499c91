"""Plugins: a third-party rule installed outside pwlint, found through a real
``pwlint`` entry point, behaves like a built-in one; and the rules' own
documentation and tests are checked the way datasette checks its hooks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pwlint.findings import Severity
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
    assert [line.split()[0] for line in run.out.splitlines() if line.strip()] == ["PW001", "PW002", "PW003", "PW004", "TP001"]


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
    assert set(listed["pwlint.formats.onnx.loader"].split(", ")) == {"onnx loader", "onnx fixes"}
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
