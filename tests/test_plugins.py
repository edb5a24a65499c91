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
from tests.conftest import Run, one_line_error, run_inprocess

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
    assert set(listed["pwlint.loaders.onnx_loader"].split(", ")) == {"onnx loader", "onnx fixes"}
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
