"""The Keras loader: a ``.keras`` or legacy ``.h5`` model to a :class:`~pwlint.ir.ModelGraph`.

The file is read statically (zipfile, json and h5py; see :mod:`keras_read`):
Keras and TensorFlow are never imported, a Lambda's code or a custom object is
never deserialised, and only weight shapes are read, never their values.

What the graph looks like:

* **Names.** A layer keeps its Keras name (``conv2d``, ``fc1``). The layers of a
  nested model (a Functional or Sequential model used as a layer) are flattened
  into the graph and named by the path of model names, ``/``-separated like
  Keras' own weight names: ``backbone/conv2d``, ``backbone/block1/bn``. The nested
  model itself has no layer: what fed it feeds its first layers, and its last
  layers feed what read it. Its inner InputLayers have no layer either.
* **Fused activations.** A Conv or Dense layer with a non-linear ``activation``
  in its config is two layers: the conv/dense, and an ``act`` layer named
  ``<layer>/activation`` right after it (``fc1/activation``), so that rules see
  ``Dense(activation="sigmoid")`` as the gate it is, exactly as in ONNX.
* **Inputs and outputs.** An InputLayer is an ``input`` layer of its own name; a
  Sequential without one gets an input layer called ``input``. Each model output
  is an ``output`` layer named ``<producing layer>/output``.
* **Shared layers.** A layer called more than once is one layer (its parameters
  counted once) with the edges of every call. A nested model called more than
  once is flattened once, in the same way.
* **Shapes and layout.** Layout is NHWC (NCHW for a layer whose config says
  ``data_format="channels_first"``). Shapes come from the config where Keras 3
  records them (the tensors of ``inbound_nodes``, ``build_config``), else they
  are computed forward from the input shape (:mod:`keras_shapes`). Layers whose
  output shape stays unknown are listed in ``graph.meta["unknown_shapes"]``, so
  that a report can say where a rule could not decide.
* **Parameters** are counted from the stored weight shapes (trainable values
  only: BatchNorm's moving mean and variance are left out), or computed from the
  config when a file stores no weights for a layer.
* **Unknown classes** (Lambda, custom layers, ``TFOpLambda``) become ``other``
  layers with ``op`` = the class name. A top-level model that is not a layer
  graph (a subclassed ``keras.Model``) is one ``other`` layer. Layers of classes
  Keras ships are ``understood``; Lambda, custom classes and a subclassed model
  are not, and a model with none understood is refused (see :mod:`pwlint.coverage`).
* **Old files.** Keras 1 and 2.0-2.1 configs are translated to the later form
  first (:mod:`keras_legacy`): bare-list Sequential configs, Keras 1 classes and
  keys, ``Merge`` layers, Keras 1 weight names.
* ``Layer.source`` is a :class:`KerasSource`: the layer's path and its config
  dict as stored, for a Keras fix backend. Edges carry Keras' tensor names,
  ``<layer>[<call>][<output>]`` as in ``model.summary()``.
* ``graph.meta`` holds ``container`` (``"keras"`` or ``"h5"``), ``keras_version``,
  ``unknown_shapes`` and, for a subclassed model, ``opaque_model``.

The modules: :mod:`keras_read` (containers), :mod:`keras_config` (the config as
data), :mod:`keras_weights` (weight shapes per layer), :mod:`keras_layers` (class
to kind and attributes), :mod:`keras_shapes` (computed shapes) and
:mod:`keras_graph` (the graph builder).
"""

from __future__ import annotations

from pwlint.ir import ModelGraph

__all__ = ["KerasLoader", "KerasSource", "load"]

def __getattr__(name: str):
    # the reader's modules are imported by the first Keras file, not by every run's start-up
    if name == "KerasSource":
        from pwlint.formats.keras.graph import KerasSource

        return KerasSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load(path: str) -> ModelGraph:
    from pwlint.formats.keras.config import is_model_entry, parse_model
    from pwlint.formats.keras.graph import GraphBuilder
    from pwlint.formats.keras.read import open_keras
    from pwlint.formats.keras.weights import index_weights

    # A file the reader knowingly checks and refuses raises LoadError with its reason;
    # any other exception is a bug here, reported as an internal error by the engine.
    with open_keras(path) as model:
        config = model.config
        spec = parse_model(config, path) if is_model_entry(config) else None
        weights = index_weights(model, spec)
        graph = GraphBuilder(model, spec, weights).build()
    return graph


class KerasLoader:
    name = "keras"
    #: ``.hdf5`` is the default suffix of Keras 2's ModelCheckpoint; files are recognised
    #: by content (pwlint.formats.sniff), these endings break ties
    suffixes = (".keras", ".h5", ".hdf5")

    @staticmethod
    def sniff(path: str, head: bytes) -> bool:
        """An HDF5 file (legacy .h5) or a zip with Keras 3's config.json."""
        from pwlint.formats.sniff import formats

        return "keras" in formats(path, head)

    @staticmethod
    def load(path: str) -> ModelGraph:
        return load(path)
