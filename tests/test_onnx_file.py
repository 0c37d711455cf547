"""ONNX export (headstart/ship/onnx_file.py): graph and weights apart, bounded memory, agreement with Keras, swapped files refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images
from typer.testing import CliRunner

from headstart.cli import app
from headstart.errors import ExportError

runner = CliRunner()
ONNX_FILES = {"model.onnx", "model.onnx.data", "labels.txt", "headstart.json"}


def _needs_onnx():
    for name in ("tf2onnx", "onnx", "onnxruntime"):
        pytest.importorskip(name, reason=f"the onnx extra is not installed ({name}): pip install -e '.[onnx]'")


def _run(tmp: Path, backbone: str = "tiny", per_class: int = 10, size=(45, 61)) -> Path:
    images = make_images(tmp / "images", per_class=per_class, classes=("cat", "dog"), size=size)
    cache, runs = tmp / "cache.h5", tmp / "runs"
    args = ["extract", str(images), "--out", str(cache), "-q", "--backbone", backbone, "--weights", "none"]
    result = runner.invoke(app, [*args, "--precision", "float32"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["compare", str(cache), "--out", str(runs), "--heads", "logreg", "--no-plots"])
    assert result.exit_code == 0, result.output
    return runs / "logreg"


def _keras_model(run: Path):
    """The classifier `export` builds for the ONNX format, built again here (portable resize)."""
    from headstart.heads.run_reader import load_run
    from headstart.ship.model import classifier_model, pixel_model
    from headstart.ship.runs import run_config

    info, head = load_run(run)
    features = pixel_model(run_config(info, run, None), portable=True)
    return classifier_model(
        features, head.to_keras(), int(head.n_features_in_), head.classes_, len(info["class_names"])
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """(run, its ONNX export) for the tiny backbone with random weights."""
    _needs_onnx()
    from headstart.ship.export import export

    tmp = tmp_path_factory.mktemp("onnx")
    run = _run(tmp)
    result = export(run, tmp / "app-onnx", "onnx")
    assert result.max_difference is not None and result.max_difference <= 1e-4
    return run, result.path


def test_onnx_export_keeps_the_weights_beside_the_graph_and_agrees_with_keras(exported):
    import onnx

    from headstart.ship.onnx_file import FOLDED, load_session

    run, out = exported
    assert {p.name for p in out.iterdir()} == ONNX_FILES
    listed = json.loads((out / "headstart.json").read_text())["files"]
    assert set(listed) == ONNX_FILES - {"headstart.json"} and listed["model.onnx.data"].startswith("sha256:")
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    external = {t.name for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    inline = [t for t in graph.initializer if t.name not in external]
    model = _keras_model(run)
    kernels = [v for v in model.weights if len(v.shape) >= 2]
    n_weights = sum(int(np.prod(v.shape)) for v in kernels)
    assert len(external) == len(kernels)  # every kernel lies in model.onnx.data
    matrices = [t.name for t in inline if len(t.dims) > 1 and np.prod(t.dims) > 16]
    assert not matrices, matrices  # the graph holds shapes, scalars and vectors (biases, statistics)
    assert (out / "model.onnx.data").stat().st_size >= 4 * n_weights
    weighted = [n for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm") and len(n.input) > 1]
    assert weighted and all(n.input[1] in external for n in weighted)  # kernels as written, not transposed at run time
    assert not [n.name for n in graph.node if n.op_type in FOLDED and n.input[0] in external]
    assert [i.name for i in graph.input] == ["pixels"] and [o.name for o in graph.output] == ["probabilities"]

    x = np.random.default_rng(5).integers(0, 256, (3, 50, 41, 3)).astype(np.float32)  # another size than the check's
    got = load_session(out).run(None, {"pixels": x})[0]
    want = np.asarray(model.predict_on_batch(x))
    assert got.shape == (3, 2) and np.allclose(got.sum(1), 1, atol=1e-5)
    assert float(np.max(np.abs(got - want))) <= 1e-4


def test_a_swapped_or_edited_weights_file_is_refused(exported, tmp_path):
    """A model.onnx.data other than the one headstart.json lists is refused before it runs, even one
    whose probabilities would pass the 1e-3 check (the old check ran any file it found)."""
    from headstart.ship.export import verify_export
    from headstart.ship.onnx_file import load_session

    run, out = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    x = np.random.default_rng(0).integers(0, 256, (2, 69, 43, 3)).astype(np.float32)
    want = np.asarray(_keras_model(run).predict_on_batch(x))
    assert verify_export(want, x, copy, "onnx", copy) <= 1e-4  # the untouched copy passes
    data = bytearray((copy / "model.onnx.data").read_bytes())
    data[-4] ^= 1  # the lowest bit of the last weight: a change far below the 1e-3 check
    (copy / "model.onnx.data").write_bytes(bytes(data))
    with pytest.raises(ExportError, match="Expected model.onnx.data to be the file that headstart.json lists"):
        load_session(copy)
    with pytest.raises(ExportError, match="model.onnx.data"):
        verify_export(want, x, copy, "onnx", copy)
    result = runner.invoke(app, ["export", str(run), "--out", str(copy), "-f", "onnx", "--overwrite"])
    assert result.exit_code == 2 and "Nothing was deleted" in result.stderr, result.output


def _rewrite(folder: Path, edit) -> None:
    """Edit model.onnx and list the edited files in headstart.json again (as someone who controls the folder could)."""
    import onnx

    from headstart.settings.config import file_sha256

    proto = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    edit(proto)
    (folder / "model.onnx").write_bytes(proto.SerializeToString())
    meta = json.loads((folder / "headstart.json").read_text())
    meta["files"] = {n: "sha256:" + file_sha256(folder / n) for n in meta["files"] if (folder / n).exists()}
    (folder / "headstart.json").write_text(json.dumps(meta))


def _external(proto):
    import onnx

    return [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("location", "../secret.bin", "Expected every weight of model.onnx in model.onnx.data"),
        ("location", "/etc/hostname", "Expected every weight of model.onnx in model.onnx.data"),
        ("offset", str(1 << 40), "inside model.onnx.data"),
        ("length", "-5", "inside model.onnx.data"),
    ],
)
def test_weights_read_from_another_file_or_past_the_end_are_refused(exported, tmp_path, key, value, message):
    from headstart.ship.onnx_file import load_session

    copy = tmp_path / "copy"
    shutil.copytree(exported[1], copy)
    (tmp_path / "secret.bin").write_bytes(b"\1" * (1 << 20))

    def edit(proto):
        tensor = _external(proto)[0]
        for entry in tensor.external_data:
            if entry.key == key:
                entry.value = value

    _rewrite(copy, edit)
    with pytest.raises(ExportError, match=message):
        load_session(copy)


def test_a_folder_without_its_manifest_is_refused(exported, tmp_path):
    from headstart.ship.onnx_file import load_session

    copy = tmp_path / "copy"
    shutil.copytree(exported[1], copy)
    (copy / "headstart.json").unlink()
    with pytest.raises(ExportError, match="with its headstart.json"):
        load_session(copy)


def test_onnx_export_without_the_extra_says_what_to_install(tmp_path, monkeypatch):
    """CI has no tf2onnx: the export says which extra to install in one line, and writes nothing."""
    run = _run(tmp_path)
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # import tf2onnx -> ImportError
    out = tmp_path / "out"
    result = runner.invoke(app, ["export", str(run), "--out", str(out), "-f", "onnx"])
    assert result.exit_code == 2, result.output
    assert "pip install -e '.[onnx]'" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_write_onnx_handles_captured_tensors_and_exact_gelu(tmp_path):
    """EfficientNetV2-B0's Normalization keeps its mean and variance as tensors, not variables (the
    function captures them), and ConvNeXt's exact GELU is TensorFlow's Erfc, which tf2onnx 1.17
    does not convert: both failed before, as dangling inputs and an unknown op."""
    _needs_onnx()
    import keras
    import onnxruntime

    from headstart.ship.onnx_file import write_onnx

    pixels = keras.Input((None, None, 3), name="pixels")
    x = keras.layers.Normalization(mean=[120.0, 110.0, 100.0], variance=[3600.0, 3500.0, 3400.0])(pixels)
    x = keras.layers.Conv2D(6, 3, padding="same")(x)
    x = keras.layers.Activation("gelu")(x)
    x = keras.layers.DepthwiseConv2D(3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(pixels, keras.layers.Dense(3, activation="softmax")(x))
    probe = np.random.default_rng(0).uniform(0, 255, (2, 19, 23, 3)).astype(np.float32)
    want = np.asarray(model(probe, training=False))
    write_onnx(model, tmp_path, "pixels", "probabilities")
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixels"]
    got = session.run(None, {"pixels": probe})[0]
    assert float(np.max(np.abs(got - want))) <= 1e-5


def test_fold_weights_gives_what_the_unfolded_graph_computes():
    """Transpose, Reshape (0 and -1), Squeeze and Unsqueeze applied to a weight as it is written
    give the values ONNX Runtime computes from the graph before folding."""
    _needs_onnx()
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    from headstart.ship.onnx_file import fold_weights

    w = np.arange(2 * 3 * 1 * 4, dtype=np.float32).reshape(2, 3, 1, 4)
    nodes = [
        helper.make_node("Transpose", ["w"], ["t"], perm=[3, 2, 0, 1]),
        helper.make_node("Reshape", ["t", "shape"], ["r"]),
        helper.make_node("Squeeze", ["w", "axes2"], ["s"]),
        helper.make_node("Unsqueeze", ["s", "axes0"], ["u"]),
        helper.make_node("Identity", ["u"], ["i"]),
        helper.make_node("MatMul", ["x", "r"], ["y1"]),
        helper.make_node("Add", ["i", "i"], ["y2"]),
    ]
    consts = [
        numpy_helper.from_array(np.array([0, -1, 2], np.int64), "shape"),
        numpy_helper.from_array(np.array([2], np.int64), "axes2"),
        numpy_helper.from_array(np.array([0], np.int64), "axes0"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 3]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, w.shape),
        ],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y1", "y2")],
        initializer=consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    x = np.random.default_rng(0).normal(size=(1, 5, 3)).astype(np.float32)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": x, "w": w})
    values = fold_weights(model.graph, {"w": lambda: w})
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Add"] and set(values) == {"r", "i"}
    assert not model.graph.initializer  # the shape and axes constants went with their nodes
    np.testing.assert_array_equal(values["r"](), np.transpose(w, [3, 2, 0, 1]).reshape(4, -1, 2))
    del model.graph.input[1]
    model.graph.initializer.extend(numpy_helper.from_array(values[n](), n) for n in ("r", "i"))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for a, b in zip(session.run(None, {"x": x}), want):
        np.testing.assert_array_equal(a, b)


# -- VGG16 fc2 (528 MB of weights) and every backbone: slow ---------------------------------------

_EXPORT_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from headstart.ship.export import export
    result = export(sys.argv[1], sys.argv[2], "onnx")
    print("RESULT " + json.dumps({"diff": result.max_difference,
                                 "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
    """
)


def _vgg16_run(tmp: Path) -> Path:
    """A logreg run on random VGG16 fc2 rows (the export builds the 528 MB backbone; no pictures needed)."""
    from headstart.cache import CacheHeader, CacheWriter
    from headstart.extractor.options import make_config
    from headstart.heads.training import train

    config = make_config("vgg16", "fc2", weights="none", precision="float32")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    x = np.abs(rng.normal(0, 0.3, (60, 4096))) + 0.05 * y[:, None]  # ReLU outputs, as fc2's
    header = CacheHeader(dim=4096, dtype="float16", fingerprint=config.fingerprint(), class_names=("a", "b"), root=".")
    with CacheWriter(tmp / "cache.h5", header) as w:
        w.append(x.astype(np.float32), y.tolist(), [f"p{i}.jpg" for i in range(len(y))])
        w.close(complete=True)
    train(tmp / "cache.h5", "logreg", tmp / "run", plots=False)
    return tmp / "run"


@pytest.mark.slow
def test_vgg16_fc2_exports_to_onnx_under_6_gib_and_agrees_with_keras(tmp_path):
    """The export that grew past 11 GiB with Keras' own ONNX export: in a fresh process, stopped the
    moment it passes 6 GiB of resident memory."""
    import psutil

    _needs_onnx()
    run, out = _vgg16_run(tmp_path), tmp_path / "vgg16-onnx"
    limit, t0 = 6 * 2**30, time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", _EXPORT_CHILD, str(run), str(out)], stdout=subprocess.PIPE, text=True
    )
    peak = 0
    while proc.poll() is None and peak <= limit and time.perf_counter() - t0 < 900:
        try:
            peak = max(peak, psutil.Process(proc.pid).memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.2)
    if proc.poll() is None:
        proc.kill()
    stdout = proc.communicate()[0]
    assert peak <= limit, f"stopped at {peak / 2**30:.1f} GiB after {time.perf_counter() - t0:.0f} s"
    line = next(ln for ln in stdout.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    assert result["peak_gib"] <= 6 and result["diff"] <= 1e-4, result
    assert {p.name for p in out.iterdir()} == ONNX_FILES
    assert (out / "model.onnx.data").stat().st_size > 500e6 and (out / "model.onnx").stat().st_size < 1e6


@pytest.mark.slow
@pytest.mark.parametrize(
    "backbone", ["mobilenet", "resnet50", "efficientnetv2_b0", "efficientnetv2_s", "convnext_tiny", "mobilenetv3_large"]
)
def test_every_backbone_exports_to_onnx_and_agrees_with_keras(tmp_path, backbone):
    import keras

    from headstart.ship.export import export

    _needs_onnx()
    keras.backend.clear_session()
    run = _run(tmp_path, backbone, size=(67, 53))
    result = export(run, tmp_path / "out", "onnx")
    assert result.max_difference is not None and result.max_difference <= 1e-4, result
    assert {p.name for p in result.path.iterdir()} == ONNX_FILES
