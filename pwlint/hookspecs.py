"""The hooks a pwlint plugin can implement, and what the core relies on in what they register.

A plugin is a module or object with ``@hookimpl`` functions, registered through
the ``pwlint`` entry-point group::

    [project.entry-points.pwlint]
    my_rules = "my_package.pwlint_plugin"

Built-in rules, loaders, reporters and fix backends are registered through these same
hooks (``pwlint.plugins.DEFAULT_PLUGINS``); ``pwlint plugins`` lists what each plugin
registered. Every hook receives ``register``, a function to call once per object; a
name or code that another plugin already registered is an error naming both plugins.

The objects' contracts are typed in :mod:`pwlint.contracts` (``Loader``, ``Reporter``,
``FixBackend``, ``FixSession``): structural protocols, so a plugin need not subclass
anything.

What a loader's graph must hold, beyond the layers and edges (:mod:`pwlint.ir`):

- ``Layer.name``: the name a user finds in the file; findings cite it, fix plans use it.
- ``Layer.understood``: False for an operator the loader does not know at all (a custom
  ONNX domain, a custom Keras class, a non-ATen torch target). Coverage counts these; a
  graph with no layers, or none understood, is refused (exit 2), never called clean.
- ``Layer.module``: the source-code module path the file records for a node whose own
  name is generated (dynamo's ``node_linear`` -> ``classifier.1``); messages show
  ``Layer.label``, ``"classifier.1 (node_linear)"``.
- ``Layer.source``: the loader's handle on the source object, for its own format's fix
  backend only; rules and reporters never read it.
- ``graph.meta`` keys with a meaning beyond the loader (any other key is the loader's own):

  - ``"missing_weights"``: a sentence saying what is missing (an absent external data
    file, weight members removed from an archive). The engine refuses the model (exit 2,
    ``PATH: <what>; pass --allow-missing-weights ...``) unless the user allows it.
  - ``"norm_folding"``: ``"possible"`` where the format's exporters fold BatchNorm into
    convolutions (ONNX eval exports): where no BatchNorm follows any conv, PW003 says
    once, as ``info``, that it cannot tell, instead of reporting every conv. Absent: normalisation stays as written (Keras, torch.export,
    TorchScript), so a conv without one is a real finding.
  - ``"producer"``: the tool that wrote the file, when it says (``"pytorch 2.13"``);
    for people reading the graph, no verdict depends on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    from pwlint.contracts import FixBackend, Loader, Reporter
    from pwlint.rule import Rule

hookspec = pluggy.HookspecMarker("pwlint")
hookimpl = pluggy.HookimplMarker("pwlint")


@hookspec
def pwlint_register_rules(register: Callable[[Rule], None]) -> None:
    """Register rules by calling ``register(rule)`` with :class:`pwlint.rule.Rule` objects.

    Rule codes must be unique across all plugins (one to six capital letters, then three
    or four digits: ``XY001``); names are kebab-case. A rule's docstring has the four sections ``What it
    does``, ``Why is this bad``, ``Example`` and ``Use instead`` (``pwlint rule XY001``
    prints it). ``check(graph, options)`` yields :class:`pwlint.findings.Finding` objects
    naming layers by ``Layer.name``; it sees only the IR, never a format's objects. A
    finding's ``fixes`` hold plans a :class:`~pwlint.contracts.FixBackend` carries out.
    """


@hookspec
def pwlint_register_loaders(register: Callable[[Loader], None]) -> None:
    """Register model loaders by calling ``register(loader)``; see :class:`pwlint.contracts.Loader`.

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

    The engine checks every loader's graph alike: sizes no real model has are refused,
    and so is a graph with no layers or none ``understood``. A loader may set
    ``graph.meta["missing_weights"]`` to a sentence naming what is missing: the model is
    then refused (exit 2) unless the user passes ``--allow-missing-weights``.
    """


@hookspec
def pwlint_register_reporters(register: Callable[[Reporter], None]) -> None:
    """Register output formats by calling ``register(reporter)``; see :class:`pwlint.contracts.Reporter`.

    A reporter has ``name`` (the ``--format`` value) and
    ``report(result, stream)``, where ``result`` is a :class:`pwlint.engine.LintResult`
    and ``stream`` a text stream. Read findings and files through their ``to_json()``
    (the stable JSON contract) or their attributes; never the graph.
    """


@hookspec
def pwlint_register_backends(register: Callable[[FixBackend], None]) -> None:
    """Register fix backends by calling ``register(backend)``; see :class:`pwlint.contracts.FixBackend`.

    A backend has ``name`` (the format it rewrites, matching a loader's ``name``),
    ``open(path)`` returning a :class:`~pwlint.contracts.FixSession` and
    ``run(model_file, feeds=None)`` returning the inputs used and the outputs, for
    numeric verification. Optional ``checker`` and ``runtime`` name the tools in reports.

    A session has ``path`` and ``last_good`` (the file holding the last verified state)
    and ``graph()``, ``apply(fix)`` (returns a note; raises
    :class:`~pwlint.errors.FixNotApplicable` when it cannot), ``checkpoint()``,
    ``accept(candidate)``, ``revert()``, ``commit(target)``, ``close()`` and
    ``file_size(file)``. :mod:`pwlint.fix.rounds` drives it: apply a round, checkpoint,
    run the candidate on the original's inputs, accept or revert, commit at the end.

    Register the backend without importing its framework (an object whose attributes
    import the real backend on first use): linting never fixes.
    """
