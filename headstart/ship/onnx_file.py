"""The ONNX format in bounded memory: ``model.onnx`` (the graph) + ``model.onnx.data`` (the weights), written and read back checked.

Keras' ``model.export(format="onnx")`` hands tf2onnx a graph with the weights folded in as
constants; tf2onnx copies every constant into its protobufs again at each of its ~24 optimizer
passes and keeps the copies (and deep-copies the graph before each pass): for VGG16 ``fc2``
(528 MB of weights) that grew past 11 GiB (17.5 GiB with its ``large_model`` mode). Here tf2onnx
converts the model with each kernel as an input instead (``keras.StatelessScope``), a graph of
operations and small vectors; the inputs then become initializers in ONNX's external-data
format, written from the Keras variables into one file beside the graph, which every ONNX
runtime reads (``InferenceSession("model.onnx")``). The transposes and reshapes tf2onnx puts on
the kernels (NHWC to NCHW) are applied to each kernel as it is written (`fold_weights`), so the
graph is the one tf2onnx makes of any model.

Reading back (`load_session`) trusts nothing in the folder: both files must have the SHA-256 that
``headstart.json`` lists, and every external tensor must lie inside ``model.onnx.data``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from headstart.errors import ExportError
from headstart.settings.config import file_sha256

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
MANIFEST = "headstart.json"  # the same name as `headstart.ship.exported.METADATA`
ALIGN_THRESHOLD = 1 << 20
"""Tensors of at least this many bytes start at a multiple of `ALIGNMENT` (so a runtime can map them)."""
ALIGNMENT = 1 << 16
WEIGHT_PREFIX = "headstart_weight_"
"""Names of the weight inputs while converting; they become initializers of the same names."""


def write_onnx(model, folder: Path, input_name: str, output_name: str, opset: int | None = None) -> None:
    """Convert ``model`` (a Keras model under the TensorFlow backend, one image input) into
    ``folder/model.onnx`` + ``folder/model.onnx.data``. Raises ImportError without tf2onnx.

    The converter never sees a kernel: it converts the model with each kernel as one more input,
    so its graph holds the operations and small vectors alone (tf2onnx copies each constant at
    each optimizer pass and keeps the copies). Those inputs then become initializers whose bytes
    are written from the Keras variables into ``model.onnx.data``, one at a time (`fold_weights`,
    `write_external`)."""
    import keras
    import tensorflow as tf
    import tf2onnx

    _patch_tf2onnx()
    _register_erfc()
    # Kernels (2 axes or more: nearly all the bytes) go in as inputs; the vectors (biases,
    # normalisation statistics, a few MB at most) stay constants that tf2onnx folds and moves
    # through its layout changes as it does for any model.
    kernels = [v for v in model.weights if len(v.shape) >= 2]
    pixels = tf.TensorSpec(tuple(model.inputs[0].shape), tf.float32, name=input_name)
    specs = [tf.TensorSpec(tuple(v.shape), v.dtype, name=f"{WEIGHT_PREFIX}{i}") for i, v in enumerate(kernels)]

    @tf.function(input_signature=[pixels, *specs])
    def serve(x, *values):
        with keras.StatelessScope(state_mapping=list(zip(kernels, values))):
            return {output_name: model(x, training=False)}

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=[pixels, *specs], opset=opset)
    weights = {f"{WEIGHT_PREFIX}{i}": v.numpy for i, v in enumerate(kernels)}
    # Tensors the model holds outside its variables (a Normalization layer's mean and variance)
    # are captured by the function; tf2onnx leaves them as graph inputs: they are weights too.
    concrete = serve.get_concrete_function(pixels, *specs)
    for tensor, value in zip(concrete.inputs[1 + len(specs) :], concrete.captured_inputs):
        if tensor.dtype != tf.dtypes.resource:
            weights[tensor.name] = value.numpy
    inputs = {i.name for i in proto.graph.input}
    if weights and not inputs & set(weights):
        raise ExportError("Expected the converted graph to take the weights as inputs. Received: none of them.")
    unknown = sorted(inputs - set(weights) - {input_name})
    if unknown:
        raise ExportError(f"Expected the converted graph to take only {input_name!r}. Received: also {unknown}.")
    values = fold_weights(proto.graph, {name: get for name, get in weights.items() if name in inputs})
    write_external(proto, values, folder)
    kept = [i for i in proto.graph.input if i.name not in weights]
    del proto.graph.input[:]
    proto.graph.input.extend(kept)
    (folder / MODEL_FILE).write_bytes(proto.SerializeToString())


def _patch_tf2onnx() -> None:
    """Keras' own fixes of tf2onnx for NumPy 2 (``np.product``, ``np.object``), which Keras applies
    before each of its ONNX exports; the large-model path needs them too."""
    try:
        from keras.src.export.tf2onnx_lib import patch_tf2onnx
    except ImportError:  # a Keras without them: tf2onnx may have its own by then
        return
    patch_tf2onnx()


def _register_erfc() -> None:
    """Teach tf2onnx TensorFlow's ``Erfc`` (exact GELU: ConvNeXt) as ``1 - Erf(x)``; tf2onnx 1.17
    converts ``Erf`` only and leaves ``Erfc`` as an op no runtime has."""
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    if any("Erfc" in ops for ops in tf_op.get_opsets().get("", [])):
        return

    @tf_op("Erfc")
    class Erfc:
        @classmethod
        def version_9(cls, ctx, node, **kwargs):  # ONNX Erf: opset 9
            import numpy as np

            dtype = ctx.get_dtype(node.input[0])
            erf = ctx.make_node("Erf", [node.input[0]], shapes=[ctx.get_shape(node.input[0])], dtypes=[dtype])
            one = ctx.make_const(utils.make_name("erfc_one"), np.array(1, utils.map_onnx_to_numpy_type(dtype)))
            node.type = "Sub"
            ctx.replace_inputs(node, [one.output[0], erf.output[0]])


def external_tensors(graph) -> Iterator:
    """Every TensorProto of ``graph`` that may hold weights: initializers and tensor attributes,
    in subgraphs too."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from external_tensors(attr.g)
            for sub in attr.graphs:
                yield from external_tensors(sub)


FOLDED = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity")
"""Operations on a weight alone that tf2onnx leaves in the graph (NHWC kernels to NCHW, bias
shapes) and that are applied to the weight as it is written instead."""


def fold_weights(graph, weights: dict[str, Callable]) -> dict[str, Callable]:
    """Remove from ``graph`` each `FOLDED` node whose data is a weight (``weights``: name → a
    function giving its array) and whose other inputs are small constants; return the weights the
    graph still reads, each as a function computing it (so one array at a time is in memory)."""
    from onnx import TensorProto, helper, numpy_helper

    small = {t.name: t for t in graph.initializer if t.data_location != TensorProto.EXTERNAL}
    values = dict(weights)
    kept = []
    for node in graph.node:
        foldable = node.op_type in FOLDED and node.domain in ("", "ai.onnx") and len(node.output) == 1
        if foldable and node.input and node.input[0] in values and all(i in small for i in node.input[1:]):
            args = [numpy_helper.to_array(small[i]) for i in node.input[1:]]
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            values[node.output[0]] = partial(_apply, node.op_type, values[node.input[0]], args, attrs)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    used = _names_read(graph)
    unused = [t for t in graph.initializer if t.name not in used]
    for tensor in unused:
        graph.initializer.remove(tensor)
    return {name: get for name, get in values.items() if name in used}


def _apply(op: str, get: Callable, args: list, attrs: dict):
    """One `FOLDED` operation with ONNX's semantics (opset 13+: axes and shape as inputs)."""
    import numpy as np

    x = get()
    if op == "Transpose":
        return np.transpose(x, attrs.get("perm"))
    if op == "Reshape":
        shape = [int(d) for d in args[0]]
        if not attrs.get("allowzero", 0):
            shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
        return np.reshape(x, shape)
    axes = [int(a) for a in args[0]] if args else attrs.get("axes")
    if op == "Squeeze":
        return np.squeeze(x) if axes is None else np.squeeze(x, tuple(axes))
    if op == "Unsqueeze":
        return np.expand_dims(x, tuple(axes))
    return x


def _names_read(graph) -> set[str]:
    """Every value name a node of ``graph`` (or of its subgraphs) reads, and its outputs."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                names |= _names_read(sub)
    return names


def write_external(proto, weights: dict[str, Callable], folder: Path) -> None:
    """Add each of ``weights`` (name → a function giving its array) to ``proto`` as an initializer
    whose bytes lie in ``model.onnx.data``, computed and written one at a time."""
    import numpy as np
    from onnx import TensorProto, helper

    offset = 0
    with open(folder / DATA_FILE, "wb") as fh:
        for name, get in weights.items():
            array = np.ascontiguousarray(np.asarray(get()))
            data = array.tobytes()
            if len(data) >= ALIGN_THRESHOLD and offset % ALIGNMENT:
                pad = ALIGNMENT - offset % ALIGNMENT
                fh.write(b"\0" * pad)
                offset += pad
            fh.write(data)
            tensor = TensorProto(name=name, dims=array.shape, data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", DATA_FILE), ("offset", str(offset)), ("length", str(len(data)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            proto.graph.initializer.append(tensor)
            offset += len(data)
            del array, data


def check_folder(folder: Path) -> None:
    """Refuse an ONNX export folder whose ``model.onnx`` or ``model.onnx.data`` is not the file
    ``headstart.json`` lists (a swapped or edited file), or whose graph reads weights from anywhere
    but ``model.onnx.data`` or past its end. Raises `ExportError`; nothing is run."""
    import onnx

    try:
        files = json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError) as err:
        raise ExportError(
            f"Expected an ONNX export of headstart with its {MANIFEST}. Received: {folder} ({err})."
        ) from None
    if not isinstance(files, dict):
        raise ExportError(f"Expected {MANIFEST} to list the export's files. Received: {folder} (no file list).")
    data = folder / DATA_FILE
    for path in (folder / MODEL_FILE, data):
        if not path.exists() and path.name not in files:
            continue  # a graph that keeps all its weights inside (none written by headstart now)
        listed = files.get(path.name)
        if path.is_symlink() or not path.is_file() or listed != "sha256:" + file_sha256(path):
            raise ExportError(
                f"Expected {path.name} to be the file that {MANIFEST} lists (SHA-256 {listed}). "
                f"Received: {path}, another file; export again."
            )
    size = data.stat().st_size if data.exists() else 0
    proto = onnx.load(str(folder / MODEL_FILE), load_external_data=False)
    for tensor in external_tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        try:
            start, length = int(entries.get("offset", "0")), int(entries["length"])
        except (KeyError, ValueError):
            start, length = -1, -1
        if entries.get("location") != DATA_FILE or set(entries) - {"location", "offset", "length"} or start < 0:
            where = entries.get("location")
            raise ExportError(
                f"Expected every weight of {MODEL_FILE} in {DATA_FILE}. Received: {tensor.name!r} at {where!r}."
            )
        if length < 0 or start + length > size:
            raise ExportError(
                f"Expected every weight of {MODEL_FILE} inside {DATA_FILE} ({size} bytes). "
                f"Received: {tensor.name!r} at bytes {start}-{start + length}."
            )


def load_session(folder: str | Path):
    """An onnxruntime ``InferenceSession`` (CPU) of the export at ``folder``, after `check_folder`."""
    import onnxruntime

    folder = Path(folder)
    check_folder(folder)
    return onnxruntime.InferenceSession(str(folder / MODEL_FILE), providers=["CPUExecutionProvider"])


def run_onnx(folder: Path, x):
    """The probabilities of the export at ``folder`` on the pixels ``x`` (see `load_session`)."""
    session = load_session(folder)
    return session.run(None, {session.get_inputs()[0].name: x})[0]
