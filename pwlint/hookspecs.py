"""The hooks a pwlint plugin can implement.

A plugin is a module or object with ``@hookimpl`` functions, registered through
the ``pwlint`` entry-point group::

    [project.entry-points.pwlint]
    my_rules = "my_package.pwlint_plugin"

Built-in rules, loaders and reporters are registered through these same hooks.
"""

import pluggy

hookspec = pluggy.HookspecMarker("pwlint")
hookimpl = pluggy.HookimplMarker("pwlint")


@hookspec
def pwlint_register_rules(register):
    """Register rules by calling ``register(rule)`` with :class:`pwlint.rule.Rule` objects.

    Rule codes must be unique across all plugins.
    """


@hookspec
def pwlint_register_loaders(register):
    """Register model loaders by calling ``register(loader)``.

    A loader has ``name`` (the format, e.g. ``"onnx"``), ``suffixes`` (lower-case
    file endings such as ``(".onnx",)``) and ``load(path) -> ModelGraph``, which
    raises :class:`pwlint.errors.LoadError` for a file it cannot read.
    """


@hookspec
def pwlint_register_reporters(register):
    """Register output formats by calling ``register(reporter)``.

    A reporter has ``name`` (the ``--format`` value) and
    ``report(result, stream)``, where ``result`` is a :class:`pwlint.engine.LintResult`.
    """


@hookspec
def pwlint_register_backends(register):
    """Register fix backends by calling ``register(backend)``.

    A backend has ``name`` (the format it rewrites, matching a loader's ``name``),
    ``open(path)`` returning a session (``graph()``, ``apply(fix)``, ``checkpoint()``,
    ``accept(candidate)``, ``revert()``, ``commit(target)``, ``close()``,
    ``file_size(file)``) and ``run(model_file, feeds=None)`` returning the inputs
    used and the outputs, for numeric verification.
    """
