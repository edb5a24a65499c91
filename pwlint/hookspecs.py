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

    Optional:

    - ``discovered``: the endings a folder is searched for, when not all of
      ``suffixes`` (``.pt`` is read when named, but in a folder it is most often a
      pickled checkpoint);
    - ``sniff(path, head) -> bool``: whether the file is of this format, judged from
      ``head``, its first 4096 bytes (read more from ``path`` only if a format needs
      it, e.g. a zip's member list). Files are matched by content, and the suffix
      only breaks ties between loaders that both recognise a file; a file named
      ``model.bin`` that is ONNX goes to the ONNX loader. A loader without ``sniff``
      is matched by its suffixes, as before, and a file whose suffix belongs to it
      goes to it without any other loader looking at the content. ``sniff`` must be
      cheap and must not raise (an exception counts as "not mine").

    A loader may set ``graph.meta["missing_weights"]`` to a sentence naming what is
    missing (an absent external data file, weight members removed from an
    archive): the model is then refused (exit 2) unless the user passes
    ``--allow-missing-weights``.
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
