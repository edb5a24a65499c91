"""What the ``.pt2`` fix tests of issue 16 share: exporting small eval models the way a
user does (``torch.export.export`` + ``torch.export.save``), carrying one plan out with the
``.pt2`` backend's session, and reading back what was written with torch itself (files
these tests wrote: ``torch.export.load`` is fine here)."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.fx.operator_schemas import normalize_function

from pwlint.findings import Fix


def save(model: torch.nn.Module, path: Path, *example: torch.Tensor, dynamic_batch: bool = False,
         decompose: bool = False) -> Path:
    """``model`` in eval mode exported on ``example`` and saved to ``path``."""
    model = model.eval()
    shapes = tuple({0: torch.export.Dim("batch")} for _ in example) if dynamic_batch else None
    program = torch.export.export(model, example, dynamic_shapes=shapes)
    if decompose:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            program = program.run_decompositions()
    torch.export.save(program, str(path))
    return path


def state(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in torch.export.load(str(path)).state_dict.items()}


def run(path: Path, *inputs: torch.Tensor):
    with torch.no_grad():
        return torch.export.load(str(path)).module()(*inputs)


def apply_plan(path: Path, plan, applicability: str = "unsafe") -> str:
    """Carry ``plan`` out on ``path`` with the ``.pt2`` session (what ``--fix`` does for one
    finding, without the rule): the written program replaces ``path``; the note."""
    from pwlint.formats.pytorch.pt2.backend import Pt2FixSession

    session = Pt2FixSession(str(path))
    try:
        note = session.apply(Fix(applicability, "test", plan.action, plan))
        session.accept(session.checkpoint())
        session.commit(str(path))
        return note
    finally:
        session.close()


@dataclass
class ConvOp:
    """A convolution of a saved program, as the file holds it."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: list[int]
    padding: list[int] | str
    dilation: list[int]
    groups: int


def convs(path: Path) -> list[ConvOp]:
    """The program's convolutions in graph order, their parameters read from its state dict."""
    program = torch.export.load(str(path))
    placeholders = {s.arg.name: s.target for s in program.graph_signature.input_specs if s.target}
    found = []
    for node in program.graph.nodes:
        if node.op != "call_function" or "conv" not in str(node.target):
            continue
        args = normalize_function(node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True).kwargs
        weight = program.state_dict[placeholders[args["weight"].name]]
        bias = args.get("bias")
        bias = program.state_dict[placeholders[bias.name]] if bias is not None else None
        rank = weight.dim() - 2

        def axes(value, rank=rank):
            return value if isinstance(value, str) else list(value) * (rank if len(value) == 1 else 1)

        found.append(ConvOp(weight.detach(), None if bias is None else bias.detach(), axes(args["stride"]),
                            axes(args["padding"]), axes(args["dilation"]), args["groups"]))
    return found


def ops(path: Path) -> list[str]:
    return [str(n.target) for n in torch.export.load(str(path)).graph.nodes if n.op == "call_function"]


def noted_error(note: str) -> float:
    """The relative error a fix's note states."""
    return float(re.search(r"relative (?:weight|kernel) error ([0-9.e+-]+)", note).group(1))


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def with_spectrum(rows: int, cols: int, singular, seed: int = 0) -> torch.Tensor:
    """A ``rows x cols`` matrix whose singular values are ``singular`` (then zeros): random
    orthonormal singular vectors, as trained layers have a decaying spectrum."""
    generator = torch.Generator().manual_seed(seed)
    singular = torch.as_tensor(singular, dtype=torch.float64)
    left, _ = torch.linalg.qr(torch.randn(rows, len(singular), generator=generator, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(cols, len(singular), generator=generator, dtype=torch.float64))
    return (left * singular) @ right.T
