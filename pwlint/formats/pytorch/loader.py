"""The PyTorch loader: ``.pt2`` archives from ``torch.export.save`` and TorchScript
archives from ``torch.jit.save``, read without importing torch and without unpickling.

- ``.pt2``: the serialized program (JSON) and weight metadata are read from the zip
  (:mod:`pwlint.formats.pytorch.pt2.read`); ``torch.export.load`` is never called, because it
  falls back to unsafe unpickling for members that fail the safe load.
- TorchScript: the module tree and its operators are read from the archive's
  ``code/`` (parsed, never run) and ``data.pkl`` (disassembled, never unpickled)
  (:mod:`pwlint.formats.pytorch.torchscript.read`). ``torch.jit.load`` is not used: it runs
  TorchScript code from the file (``__setstate__`` methods) while loading.
- ``torch.save`` pickles (a whole module or a state_dict) are refused with a hint to
  export the model with ``torch.export``.

Layers are named by module path (``features.0``); see :mod:`pwlint.formats.pytorch.graph`
for how operators become layers and how functional calls are named.
"""

from __future__ import annotations

from pwlint.ir import ModelGraph
from pwlint.formats.pytorch.archive import classify, not_a_zip, open_archive, refuse_pickle


def read_program(path: str):
    """The file's :class:`~pwlint.formats.pytorch.program.Program` and its format name."""
    archive = open_archive(path)
    if archive is None:
        raise not_a_zip(path)
    try:
        kind, root = classify(archive)
        if kind == "pickle":
            raise refuse_pickle(path, "a torch.save() pickle (a whole module or a state_dict), not an exported program")
        if kind == "torchscript":
            from pwlint.formats.pytorch.torchscript.read import read_torchscript

            return read_torchscript(archive, root), "torchscript"
        from pwlint.formats.pytorch.pt2.read import read_pt2

        return read_pt2(archive, kind, root), "pt2"
    finally:
        archive.close()


def load(path: str) -> ModelGraph:
    """The file's graph. What the readers knowingly check and refuse raises LoadError;
    any other exception is a bug here, reported as an internal error by the engine."""
    from pwlint.formats.pytorch.graph import build_graph

    program, fmt = read_program(path)
    graph = build_graph(program, path)
    graph.meta["container"] = fmt
    return graph


class TorchLoader:
    name = "torch"
    #: files are recognised by content (pwlint.formats.sniff); these endings break ties
    #: and route files whose content is too damaged to recognise
    suffixes = (".pt2", ".pt", ".pth", ".jit", ".torchscript", ".ts")
    #: what a folder is searched for: a .pt or .pth there is usually a pickled
    #: checkpoint (refused, exit 2) and .ts is TypeScript; such files are linted when named
    discovered = (".pt2", ".jit", ".torchscript")

    @staticmethod
    def sniff(path: str, head: bytes) -> bool:
        """A .pt2 or TorchScript archive, a torch.save zip or a legacy pickle (the last
        two are refused with a hint to export the model)."""
        from pwlint.formats.sniff import formats

        return "torch" in formats(path, head)

    @staticmethod
    def load(path: str) -> ModelGraph:
        return load(path)
