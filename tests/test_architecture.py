"""The layering of pwlint, checked on its import graph (DESIGN.md, "How the code is laid out").

Every module under ``pwlint/`` and ``pwlint_rules/`` is parsed with :mod:`ast`; every
``import`` counts wherever it stands, inside functions too (an import put in a function to
dodge a cycle at start-up is still a cycle in the design). Relative imports are resolved,
and ``from package import name`` counts as importing the submodule ``package.name`` when
there is one. Imports under ``if TYPE_CHECKING:`` never run: they count for the layering
contracts (a rule that names an ONNX type in an annotation knows a format) but not for
cycles (annotations referring to each other is what ``TYPE_CHECKING`` is for). Modules
named only in strings (the ``DEFAULT_PLUGINS`` the plugin host imports by name) are not
edges: the host loads the built-in plugins as it would a third party's.

The contracts held here:

1. **No cycles** among pwlint's modules (through the imports that run, function-level
   ones included).
2. **Formats are independent**: ``pwlint.formats.onnx``, ``pwlint.formats.keras`` and
   ``pwlint.formats.pytorch`` never import one another (``pwlint.formats.sniff``, which
   recognises every format by content, may be used by all).
3. **Rules and reporters see only the IR**: ``pwlint_rules`` and ``pwlint.reporters``
   import no format package and not the fix loop (``pwlint.fix.rounds``); typed fix
   plans (``pwlint.fix.plans``) are format-neutral data and allowed.
4. **The IR is the bottom**: ``pwlint.ir`` imports nothing from pwlint.
5. **Only formats know formats**: no module outside ``pwlint.formats`` imports a format
   package: not the core (IR, engine, configuration, findings, plugin host, which finds
   the formats by plugin name), not the format-neutral fixing in ``pwlint.fix``.

The same checker is run on small synthetic packages in ``tmp_path`` with a planted cycle
and planted forbidden imports, so that a green run here means something.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOP_PACKAGES = ("pwlint", "pwlint_rules")
FORMATS = ("pwlint.formats.onnx", "pwlint.formats.keras", "pwlint.formats.pytorch")
SEE_ONLY_THE_IR = ("pwlint_rules", "pwlint.reporters")
FIX_LOOP = "pwlint.fix.rounds"


# --- the checker -------------------------------------------------------------------------

def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` under each of ``packages`` in ``root``."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(tree: ast.AST, type_checking: bool):
    """Every node of ``tree``, without the bodies of ``if TYPE_CHECKING:`` unless
    ``type_checking`` (their ``else`` branches run, so they stay)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if not type_checking and isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imported_names(module: str, path: Path, type_checking: bool = True) -> set[str]:
    """Every dotted name ``module`` imports, wherever the import statement stands (under
    ``if TYPE_CHECKING:`` only when ``type_checking``)."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    names = set()
    for node in _statements(ast.parse(path.read_text(encoding="utf-8"), str(path)), type_checking):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # resolved to the longest prefix that is a module: base.name for a
            # submodule, else base itself (``from pwlint.ir import Layer``)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(
    root: Path, packages: tuple[str, ...] = TOP_PACKAGES, type_checking: bool = True,
) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports (itself excluded); with
    ``type_checking`` False, only the imports that run."""
    modules = module_files(root, packages)
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in imported_names(module, path, type_checking):
            # the longest prefix that is one of our modules (a name imported from one is not)
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles, one per strongly connected component (Tarjan), each shown as a
    closed path ``a -> b -> ... -> a`` through that component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(start: str) -> None:  # iterative, so a long chain cannot hit the recursion limit
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_closed_path(graph, set(component)) for component in components]


def _closed_path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the first member of ``component`` (breadth-first)."""
    start = min(component)
    previous = {start: None}
    queue = [start]
    for node in queue:
        for child in sorted(graph.get(node, ()) & component):
            if child == start:
                path = [node]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, node, start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    return sorted(component)  # not reached: a component of two or more always closes


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@dataclass(frozen=True)
class Forbidden:
    """``importer`` (a module in ``layer``) imports ``imported``, which ``layer`` may not."""

    importer: str
    imported: str
    layer: str

    def __str__(self) -> str:
        return f"{self.importer} imports {self.imported} ({self.layer} may not)"


def forbidden_imports(
    graph: dict[str, set[str]], layer: str, banned: tuple[str, ...], allowed: tuple[str, ...] = (),
    outside: str | None = None,
) -> list[Forbidden]:
    """Imports from modules in ``layer`` of modules in ``banned`` (but not in ``allowed``);
    with ``outside``, ``layer`` is every module not in that package."""
    found = []
    for importer, targets in sorted(graph.items()):
        if not within(importer, layer) or (outside is not None and within(importer, outside)):
            continue
        for target in sorted(targets):
            if any(within(target, b) for b in banned) and not any(within(target, a) for a in allowed):
                found.append(Forbidden(importer, target, layer))
    return found


def contract_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every broken contract of the module docstring (cycles aside), one line each."""
    problems: list[Forbidden] = []
    for fmt in FORMATS:
        others = tuple(other for other in FORMATS if other != fmt)
        problems += forbidden_imports(graph, fmt, others)
    for layer in SEE_ONLY_THE_IR:
        problems += forbidden_imports(graph, layer, (*FORMATS, FIX_LOOP))
    problems += forbidden_imports(graph, "pwlint.ir", TOP_PACKAGES)
    problems += [
        Forbidden(p.importer, p.imported, "a module outside pwlint.formats")
        for p in forbidden_imports(graph, "pwlint", FORMATS, outside="pwlint.formats")
    ]
    return [str(problem) for problem in problems]


# --- pwlint itself -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def pwlint_graph() -> dict[str, set[str]]:
    return import_graph(ROOT)


def test_the_graph_is_pwlint_s(pwlint_graph):
    # a checker that read nothing would pass everything: it sees the modules and the
    # imports inside functions (the engine imports the fix loop only when fixing)
    assert {"pwlint.engine", "pwlint.ir", "pwlint_rules.flatten_dense_head", "pwlint.formats.onnx.loader"} <= set(pwlint_graph)
    assert "pwlint.fix.rounds" in pwlint_graph["pwlint.engine"]
    assert "pwlint.ir" in pwlint_graph["pwlint_rules.flatten_dense_head"]


def test_no_import_cycles():
    cycles = find_cycles(import_graph(ROOT, type_checking=False))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_layering_contracts(pwlint_graph):
    problems = contract_violations(pwlint_graph)
    assert not problems, "\n".join(problems)


# --- the checker can fail ----------------------------------------------------------------

def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


PACKAGE_INITS = {
    "pwlint/__init__.py": "",
    "pwlint/formats/__init__.py": "",
    "pwlint/formats/onnx/__init__.py": "",
    "pwlint/formats/keras/__init__.py": "",
    "pwlint/reporters/__init__.py": "",
    "pwlint/fix/__init__.py": "",
    "pwlint_rules/__init__.py": "",
}


def test_a_cycle_hidden_in_a_function_is_found(tmp_path):
    root = _package(tmp_path, {
        **PACKAGE_INITS,
        "pwlint/cli.py": "from pwlint import model_diff\n",
        # the cycle closes inside a function, through a relative import
        "pwlint/model_diff.py": "def run():\n    from .cli import split_selectors\n",
        "pwlint/ir.py": "",
    })
    assert find_cycles(import_graph(root)) == [["pwlint.cli", "pwlint.model_diff", "pwlint.cli"]]


def test_a_longer_cycle_is_shown_as_a_path(tmp_path):
    root = _package(tmp_path, {
        **PACKAGE_INITS,
        "pwlint/formats/onnx/read.py": "from pwlint.formats.onnx import types\n",
        "pwlint/formats/onnx/types.py": "import pwlint.formats.onnx.values\n",
        "pwlint/formats/onnx/values.py": "from . import read\n",
    })
    (cycle,) = find_cycles(import_graph(root))
    assert cycle == [
        "pwlint.formats.onnx.read", "pwlint.formats.onnx.types", "pwlint.formats.onnx.values",
        "pwlint.formats.onnx.read",
    ]


def test_type_only_imports_are_no_cycle_but_still_break_layers(tmp_path):
    root = _package(tmp_path, {
        **PACKAGE_INITS,
        "pwlint/engine.py": "from pwlint.fix import rounds\n",
        "pwlint/fix/rounds.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pwlint.engine import LintResult\n",
        "pwlint/formats/onnx/loader.py": "",
        "pwlint_rules/head.py": "import typing\nif typing.TYPE_CHECKING:\n    from pwlint.formats.onnx.loader import OnnxLoader\n",
    })
    assert find_cycles(import_graph(root, type_checking=False)) == []
    assert find_cycles(import_graph(root)) == [["pwlint.engine", "pwlint.fix.rounds", "pwlint.engine"]]
    assert contract_violations(import_graph(root)) == [
        "pwlint_rules.head imports pwlint.formats.onnx.loader (pwlint_rules may not)",
    ]


def test_no_cycle_in_a_layered_package(tmp_path):
    root = _package(tmp_path, {
        **PACKAGE_INITS,
        "pwlint/ir.py": "",
        "pwlint/walk.py": "from pwlint.ir import Layer\n",
        "pwlint/engine.py": "from pwlint import walk, ir\n",
    })
    assert find_cycles(import_graph(root)) == []


def test_forbidden_imports_are_reported(tmp_path):
    root = _package(tmp_path, {
        **PACKAGE_INITS,
        "pwlint/ir.py": "def f():\n    from pwlint.findings import Finding\n",
        "pwlint/findings.py": "",
        "pwlint/formats/sniff.py": "",
        "pwlint/formats/onnx/loader.py": "from pwlint.formats import sniff\n",  # allowed
        "pwlint/formats/keras/layers.py": "from ..onnx.loader import is_layout_perm\n",
        "pwlint/reporters/text.py": "import pwlint.fix.rounds\n",
        "pwlint/fix/rounds.py": "",
        "pwlint/fix/plans.py": "",
        "pwlint_rules/head.py": "from pwlint.fix.plans import HeadPlan\nfrom pwlint.formats.onnx import loader\n",
        "pwlint/fix/head.py": "def kernel():\n    from pwlint.formats.keras.layers import channels\n",
        "pwlint/plugins.py": "from pwlint.formats import sniff\n",  # allowed: sniff serves every format
    })
    assert contract_violations(import_graph(root)) == [
        "pwlint.formats.keras.layers imports pwlint.formats.onnx.loader (pwlint.formats.keras may not)",
        "pwlint_rules.head imports pwlint.formats.onnx.loader (pwlint_rules may not)",
        "pwlint.reporters.text imports pwlint.fix.rounds (pwlint.reporters may not)",
        "pwlint.ir imports pwlint.findings (pwlint.ir may not)",
        "pwlint.fix.head imports pwlint.formats.keras.layers (a module outside pwlint.formats may not)",
    ]
