"""The plugin host: one pluggy PluginManager, built-ins registered like entry points."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, TypeGuard

import pluggy

from pwlint import hookspecs
from pwlint.contracts import FixBackend, Loader, Reporter, SniffingLoader
from pwlint.errors import LoadError, PwlintError

if TYPE_CHECKING:
    from pwlint.ir import ModelGraph
    from pwlint.rule import Rule

ENTRY_POINT_GROUP = "pwlint"
DISABLE_AUTOLOAD_ENV = "PWLINT_DISABLE_PLUGIN_AUTOLOAD"

#: Built-in plugins, registered by module name exactly as an entry point would be. Each
#: module's docstring says what it registers (``tests/test_plugins.py`` checks there is one).
DEFAULT_PLUGINS = (
    "pwlint_rules",
    "pwlint.formats.onnx.plugin",
    "pwlint.formats.keras.plugin",
    "pwlint.formats.pytorch.plugin",
    "pwlint.reporters.text",
    "pwlint.reporters.json",
    "pwlint.reporters.concise",
    "pwlint.reporters.github",
    "pwlint.reporters.junit",
    "pwlint.reporters.sarif",
)


@dataclass
class Registry:
    """Everything the plugins registered, keyed by code, format or format name."""

    rules: dict[str, Rule] = field(default_factory=dict)
    loaders: dict[str, Loader] = field(default_factory=dict)
    reporters: dict[str, Reporter] = field(default_factory=dict)
    backends: dict[str, FixBackend] = field(default_factory=dict)
    #: plugin name -> the rule codes, loader and reporter names it registered
    provided: dict[str, list[str]] = field(default_factory=dict)

    def loader_for(self, path: str) -> Loader | RefusedFile | None:
        """The loader for ``path``, chosen by content; the suffix only breaks ties.

        - A file whose suffix first belongs to a loader without ``sniff`` goes to that
          loader, as it always did: a plugin's format is never taken by a guess.
        - Otherwise the loaders that can ``sniff(path, head)`` are asked; of several
          that recognise the file, the one whose suffix it has wins, else the first.
        - Content that is recognisably not a model (a Git LFS pointer, safetensors)
          gets a :class:`RefusedFile`, whose ``load`` says why in one line.
        - Else the suffix decides, so that a damaged ``.onnx`` still gets the ONNX
          loader's own error, and None means no loader reads this file.
        """
        from pwlint.formats import sniff

        lowered = path.lower()
        by_suffix = [loader for loader in self.loaders.values() if lowered.endswith(tuple(loader.suffixes))]
        if by_suffix and not _can_sniff(by_suffix[0]):
            return by_suffix[0]
        head = sniff.read_head(path)
        if not head:  # unreadable or empty: the loader says so in its own words
            return by_suffix[0] if by_suffix else None
        claimed = [loader for loader in self.loaders.values() if _can_sniff(loader) and _sniffs(loader, path, head)]
        if claimed:
            return next((loader for loader in claimed if loader in by_suffix), claimed[0])
        reason = sniff.refusal(path, head)
        if reason is not None:
            return RefusedFile(reason)
        return by_suffix[0] if by_suffix else None

    @property
    def suffixes(self) -> tuple[str, ...]:
        return tuple(s for loader in self.loaders.values() for s in loader.suffixes)

    @property
    def discovered_suffixes(self) -> tuple[str, ...]:
        """What a folder is searched for. A loader may read more when the file is named
        (``.pt`` is most often a pickled checkpoint, which pwlint refuses to open)."""
        return tuple(
            s for loader in self.loaders.values() for s in getattr(loader, "discovered", loader.suffixes)
        )


class RefusedFile:
    """What :meth:`Registry.loader_for` gives for a file whose content shows it is not a
    model (a Git LFS pointer, a safetensors file): loading it is a one-line error.
    A :class:`~pwlint.contracts.Loader` but for its name."""

    name: str | None = None  # no format: JSON reports ``"format": null`` with the error
    suffixes: tuple[str, ...] = ()

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def load(self, path: str) -> ModelGraph:
        raise LoadError(self.reason)


def _can_sniff(loader: Loader) -> TypeGuard[SniffingLoader]:
    return callable(getattr(loader, "sniff", None))


def _sniffs(loader: SniffingLoader, path: str, head: bytes) -> bool:
    try:
        return bool(loader.sniff(path, head))
    except Exception:  # noqa: BLE001 - a plugin's broken sniff must not stop every file
        return False  # being read: its suffix still routes files to it


def make_plugin_manager(autoload: bool | None = None) -> pluggy.PluginManager:
    """The built-ins, then (unless ``autoload`` is False or ``PWLINT_DISABLE_PLUGIN_AUTOLOAD``
    is set) the ``pwlint`` entry points; a plugin that fails to load is a one-line error."""
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    if autoload is None:
        autoload = not os.environ.get(DISABLE_AUTOLOAD_ENV)
    if autoload:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:  # a broken third-party plugin must not give a traceback
            raise PwlintError(f"could not load a plugin: {exc}") from exc
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:  # e.g. a misspelled hook name in a plugin
        raise PwlintError(f"invalid plugin: {exc}") from exc
    return pm


def collect(pm: pluggy.PluginManager) -> Registry:
    """Call every plugin's register hooks; a key two plugins register is an error naming both."""
    registry = Registry()
    for plugin_name, _ in pm.list_name_plugin():
        registry.provided[plugin_name] = []
    hooks = (
        (pm.hook.pwlint_register_rules, registry.rules, lambda r: r.code, "{}"),
        (pm.hook.pwlint_register_loaders, registry.loaders, lambda r: r.name, "{} loader"),
        (pm.hook.pwlint_register_reporters, registry.reporters, lambda r: r.name, "{} format"),
        (pm.hook.pwlint_register_backends, registry.backends, lambda r: r.name, "{} fixes"),
    )
    for caller, target, key_of, label in hooks:
        owners: dict[str, str] = {}
        # called one implementation at a time so that we know which plugin gave what
        for impl in reversed(caller.get_hookimpls()):
            provided = registry.provided.setdefault(impl.plugin_name, [])

            def register(item, target=target, key_of=key_of, impl=impl, provided=provided, owners=owners, label=label):
                key = key_of(item)
                if key in target:
                    # name both: plugins are called last-registered first, so the
                    # plugin already holding the key may be the one that clashes
                    raise PwlintError(
                        f"plugins {owners[key]!r} and {impl.plugin_name!r} both register {key!r}"
                    )
                target[key] = item
                owners[key] = impl.plugin_name
                provided.append(label.format(key))

            impl.function(register=register)
    return registry


@lru_cache(maxsize=None)
def get_registry(autoload: bool | None = None) -> Registry:
    """The registry of this process, collected once."""
    return collect(make_plugin_manager(autoload))
