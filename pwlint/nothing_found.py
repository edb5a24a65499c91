"""What ``pwlint FOLDER`` says when the folder holds no model file it searches for.

As in ruff, a folder with nothing to lint is not a failure: a warning on stderr and
exit 0 (a new repository, a CI job run before the models are added). But a folder
holding model-like files pwlint does not read is explained, with exit 2, since the
user evidently meant those to be linted:

- ``.pt``/``.pth`` (and ``.bin``/``.ckpt``/``.pkl`` whose content is a torch pickle)
  are usually ``torch.save`` pickles, which pwlint never unpickles; a TorchScript or
  ``.pt2`` archive saved under such a name is read when named, not searched for;
- other frameworks' formats (safetensors, TensorFlow ``.pb``/``.tflite``, GGUF,
  Core ML, TensorRT, Caffe) are named with the way to a format pwlint reads.

Only the first bytes of such files are read (and a zip's member list); nothing is
unpickled or imported from a framework.
"""

from __future__ import annotations

import os

from pwlint.errors import PwlintError

#: how a torch pickle is re-saved as something pwlint reads
RESAVE_TORCH = (
    "pwlint reads TorchScript (torch.jit.save) and torch.export (.pt2) archives; re-save the model with "
    "torch.export.save(torch.export.export(model, example_inputs), 'model.pt2')"
)
#: suffix -> (what the file is, why it is not read and what to do), decided by the suffix alone
OTHER_FORMATS = {
    ".safetensors": "safetensors files hold raw tensors and no architecture; export the model itself "
                    "(torch.export.save to .pt2, torch.onnx.export to .onnx, or keras model.save to .keras)",
    ".pb": "TensorFlow graphs (SavedModel, frozen .pb) are not read; convert to ONNX with tf2onnx "
           "(python -m tf2onnx.convert --saved-model DIR --output model.onnx) or save a Keras model as .keras",
    ".tflite": "TensorFlow Lite models are not read; lint the model before conversion (.keras, .onnx)",
    ".gguf": "GGUF (llama.cpp) files are not read; lint the model before conversion",
    ".mlmodel": "Core ML models are not read; lint the model before conversion",
    ".engine": "TensorRT engines are not read; lint the ONNX model the engine was built from",
    ".trt": "TensorRT engines are not read; lint the ONNX model the engine was built from",
    ".caffemodel": "Caffe models are not read; convert to ONNX first",
}
#: suffixes whose content decides: a torch pickle or archive is explained, anything else ignored
TORCH_LIKE = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
#: files named per kind of reason before "and N more"
SHOWN = 3


def explain(paths: list[str], searched: tuple[str, ...], skip_dirs, model_suffixes: tuple[str, ...] = ()) -> str:
    """The warning for folders that hold nothing to lint (returned), or a
    :class:`PwlintError` naming the files found that pwlint does not read and why.

    A folder named like a model file (``model.onnx/``) is an error too: the user took
    it for the model."""
    for path in paths:
        if os.path.isdir(path) and path.rstrip("/\\").lower().endswith(model_suffixes):
            raise PwlintError(f"{path}: a folder, not a model file, and no model files were found in it")
    reasons: dict[str, list[str]] = {}
    for path in _files_under(paths, skip_dirs):
        reason = _why_not_read(path)
        if reason is not None:
            reasons.setdefault(reason, []).append(path)
    where = ", ".join(paths)
    if not reasons:
        return f"no model files found in {where} (folders are searched for {', '.join(searched)})"
    parts = []
    for reason, files in reasons.items():
        named = ", ".join(files[:SHOWN]) + (f" and {len(files) - SHOWN} more" if len(files) > SHOWN else "")
        parts.append(f"{named}: {reason}")
    raise PwlintError(f"no model file pwlint reads in {where}: {'; '.join(parts)}")


def _files_under(paths: list[str], skip_dirs):
    """Every file under the folders, walked as the search walks them (hidden folders skipped)."""
    for path in paths:
        if not os.path.isdir(path):
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in skip_dirs)
            yield from (os.path.join(root, name) for name in sorted(files))


def _why_not_read(path: str) -> str | None:
    lowered = path.lower()
    for suffix, reason in OTHER_FORMATS.items():
        if lowered.endswith(suffix):
            return reason
    if lowered.endswith(TORCH_LIKE):
        return _torch_reason(path, named_only=lowered.endswith((".pt", ".pth")))
    return None


def _torch_reason(path: str, named_only: bool) -> str | None:
    """Why a .pt-like file was not linted, from its content: a pickle, or an archive
    pwlint would read if it were named."""
    from pwlint.formats import sniff

    head = sniff.read_head(path)
    if not head or "torch" not in sniff.formats(path, head):
        return "not a model pwlint recognises" if named_only else None
    if head.startswith(b"PK") and sniff.torch_zip_kind(sniff.zip_member_names(path, head)) != "pickle":
        return (
            "TorchScript or .pt2 archives under a name folders are not searched for (most .pt files are "
            "pickled checkpoints); name the file to lint it, or save it as .pt2, .jit or .torchscript"
        )
    return f"torch.save() pickles, which pwlint never unpickles: {RESAVE_TORCH}"

