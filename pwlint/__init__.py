"""pwlint: a linter for neural-network models.

Kept import-light on purpose: ``pwlint --version`` and a pre-commit hook pay for
every module imported here.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
