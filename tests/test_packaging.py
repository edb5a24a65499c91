"""What `pip install .` installs: every package of the source tree, and the rules."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_is_listed_for_installation():
    listed = set(_config()["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "pwlint").rglob("__init__.py")
    }
    assert found <= listed, sorted(found - listed)


def test_rules_folder_is_the_pwlint_rules_package():
    """The folder is named as it is imported: no package-dir mapping to get wrong."""
    setuptools = _config()["tool"]["setuptools"]
    assert "pwlint_rules" in setuptools["packages"]
    assert "package-dir" not in setuptools
    assert (ROOT / "pwlint_rules" / "__init__.py").is_file()


def test_torch_is_pinned_everywhere():
    extras = _config()["project"]["optional-dependencies"]
    torch_specs = [spec for deps in extras.values() for spec in deps if spec.startswith("torch")]
    assert torch_specs and all(spec == "torch==2.13.0" for spec in torch_specs)
