"""Export: pixels → probabilities from Keras layers only; same answers as predict; formats; errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import MOBILENET_WEIGHTS, PETS, PICTURE_KINDS, make_images, make_picture_kinds, needs_shared
from typer.testing import CliRunner

from headstart.cli import app

runner = CliRunner()


def _train(tmp: Path, images: Path, extract_args: list[str], head: str = "logreg") -> Path:
    cache, run = tmp / "cache.h5", tmp / "runs"
    result = runner.invoke(app, ["extract", str(images), "--out", str(cache), "-q", *extract_args])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["compare", str(cache), "--out", str(run), "--heads", head, "--no-plots"])
    assert result.exit_code == 0, result.output
    return run / head


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """A logreg run on the tiny backbone (random weights) over 40 small coloured JPEGs of odd sizes."""
    tmp = tmp_path_factory.mktemp("export")
    images = make_images(tmp / "images", per_class=20, classes=("cat", "dog"), size=(45, 61))
    return _train(tmp, images, ["--backbone", "tiny", "--weights", "none", "--precision", "float32"]), images


# -- preprocessing as layers --------------------------------------------------------------------


def test_every_registered_preprocessing_has_layers_that_compute_the_same():
    import keras

    from headstart.settings.backbones import PREPROCESSING
    from headstart.ship.model import preprocessing_layers

    x = np.random.default_rng(0).uniform(0, 255, (2, 5, 7, 3)).astype(np.float32)
    for name, function in PREPROCESSING.items():
        y = keras.ops.convert_to_tensor(x)
        for layer in preprocessing_layers(name):
            y = layer(y)
        np.testing.assert_allclose(np.asarray(y), function(x.copy()), rtol=1e-6, atol=1e-4, err_msg=name)


def test_pixel_model_at_the_input_size_gives_the_cached_features(tiny_config):
    from headstart.extractor.embed import Embedder
    from headstart.ship.model import pixel_model

    pixels = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    expected = Embedder(tiny_config, batch_size=3)(list(pixels))
    np.testing.assert_allclose(
        pixel_model(tiny_config).predict_on_batch(pixels.astype(np.float32)), expected, rtol=1e-5, atol=1e-5
    )


# -- the .keras file ----------------------------------------------------------------------------


def test_export_keras_loads_without_headstart_and_agrees_with_predict(tiny_run, tmp_path):
    run, images = tiny_run
    out = tmp_path / "pets.keras"
    result = runner.invoke(app, ["export", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "checked against the Keras model" in result.stdout and out.is_file()
    with zipfile.ZipFile(out) as zf:
        meta = json.loads(zf.read("headstart.json"))
    assert meta["class_names"] == ["cat", "dog"] and meta["extraction"]["backbone"] == "tiny"

    # A Python that cannot import headstart loads the file in safe mode and classifies a picture.
    picture = sorted(images.glob("dog/*.jpg"))[0]
    code = (
        "import sys; sys.modules['headstart'] = None\n"
        "import json, zipfile, numpy as np, keras, PIL.Image as I\n"
        f"m = keras.saving.load_model({str(out)!r}, safe_mode=True)\n"
        f"names = json.loads(zipfile.ZipFile({str(out)!r}).read('headstart.json'))['class_names']\n"
        f"p = m.predict(np.asarray(I.open({str(picture)!r}).convert('RGB'))[None], verbose=0)\n"
        "print(json.dumps({'shape': list(p.shape), 'sum': float(p.sum()), 'class': names[int(p.argmax())]}))\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["shape"] == [1, 2] and abs(got["sum"] - 1) < 1e-5

    # predict with the exported file and with the run folder: the same probabilities.
    files = sorted(images.rglob("*.jpg"))
    by_run = runner.invoke(app, ["predict", str(run), *map(str, files), "--json", "--top-k", "2"])
    by_file = runner.invoke(app, ["predict", str(out), *map(str, files), "--json", "--top-k", "2"])
    assert by_run.exit_code == 0 and by_file.exit_code == 0, by_file.output
    a, b = (json.loads(r.stdout)["predictions"] for r in (by_run, by_file))
    assert [p["path"] for p in a] == [p["path"] for p in b]
    assert [p["class"] for p in a] == [q["class"] for q in b]
    assert max_difference(a, b) <= 1e-3
    assert got["class"] == next(p["class"] for p in b if p["path"] == str(picture))


def max_difference(a: list[dict], b: list[dict]) -> float:
    """Largest difference of any class's probability between two `predict --json` lists."""
    out = 0.0
    for p, q in zip(a, b):
        pa, pb = ({t["class"]: t["probability"] for t in x["top"]} for x in (p, q))
        assert pa.keys() == pb.keys()
        out = max(out, max(abs(pa[c] - pb[c]) for c in pa))
    return out


def _agreement(run: Path, exported: Path, kinds: dict[str, list[Path]]) -> dict[str, tuple[bool, float]]:
    """Per picture kind: whether every top-1 class is the same, and the largest probability difference."""
    from headstart.ship.predict import predict

    files = [p for paths in kinds.values() for p in paths]
    by_run = {p.path: dict(p.top) for p in predict(run, files, top_k=1000).predictions}
    by_file = {p.path: dict(p.top) for p in predict(exported, files, top_k=1000).predictions}
    top = lambda d: max(d, key=d.get)  # noqa: E731
    out = {}
    for kind, paths in kinds.items():
        same = all(top(by_run[p]) == top(by_file[p]) for p in paths)
        out[kind] = (same, max(abs(by_run[p][c] - by_file[p][c]) for p in paths for c in by_run[p]))
    return out


def test_export_gives_the_probabilities_of_predict_on_every_picture_kind(tiny_run, tmp_path):
    """One resize everywhere: upscaled, downscaled, non-square, EXIF-rotated, grayscale, RGBA and
    16-bit pictures get the same top-1 class and probabilities within 1e-3 from the exported model
    (fed each picture whole) and from `predict` (the cache's decoding and resize)."""
    run, _ = tiny_run
    out = tmp_path / "m.keras"
    result = runner.invoke(app, ["export", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "agrees with headstart predict" in result.stdout and "Note:" not in result.output
    kinds = make_picture_kinds(tmp_path / "kinds", 32)
    agreement = _agreement(run, out, kinds)
    assert set(agreement) == set(PICTURE_KINDS)
    for kind, (same, diff) in agreement.items():
        assert same and diff <= 1e-3, f"{kind}: top-1 the same: {same}, largest difference {diff:.3g}"


def test_export_of_a_cache_resized_on_8_bit_pixels_says_so_with_the_measured_difference(tmp_path):
    """Caches made before the resampler was recorded (Pillow on rounded 8-bit pixels, JPEG draft):
    still read, and `export` says that it cannot reproduce their resize, with the figure."""
    images = make_images(tmp_path / "images", per_class=20, classes=("cat", "dog"), size=(45, 61))
    old = ["--backbone", "tiny", "--weights", "none", "--precision", "float32", "--resampler", "pillow-uint8"]
    run = _train(tmp_path, images, [*old, "--draft"])
    cache = json.loads((run / "run.json").read_text())["cache"]["fingerprint"]
    assert "resampler" not in cache and cache["jpeg_draft"] is True  # the fingerprint of an old cache
    result = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "m.keras")])
    assert result.exit_code == 0, result.output
    assert "cannot reproduce the cache's pixels" in result.stderr and "pillow-uint8" in result.stderr
    from headstart.ship.exported import read_metadata

    measured = read_metadata(tmp_path / "m.keras")["cache_difference"]["max_abs_probability"]
    assert measured > 1e-3 and f"by up to {measured:.3g}" in result.stderr

    # predict computes the old cache's own pixels: its features are the cache's rows
    from headstart.cache import open_cache
    from headstart.extractor.embed import embed_files
    from headstart.settings.config import config_of

    with open_cache(tmp_path / "cache.h5") as cache:
        config, rows, paths = config_of(cache), cache.read(), [images / p for p in cache.paths]
    assert config.resampler == "pillow-uint8"
    np.testing.assert_allclose(embed_files(paths, config).features, rows, rtol=1e-3, atol=1e-3)
    # resuming it takes its options; today's defaults are refused naming the setting that differs
    again = ["extract", str(images), "--out", str(tmp_path / "cache.h5"), "-q", *old[:-2]]
    result = runner.invoke(app, again)
    assert result.exit_code == 2 and "resampler" in result.stderr and "jpeg_draft" in result.stderr
    assert runner.invoke(app, [*again, "--resampler", "pillow-uint8", "--draft"]).exit_code == 0


@pytest.mark.parametrize("head", ["logreg", pytest.param("mlp", marks=pytest.mark.slow)])
def test_crop_export(tmp_path, head):
    images = make_images(tmp_path / "images", per_class=12, size=(40, 70))
    run = _train(tmp_path, images, ["--backbone", "tiny", "--weights", "none", "--resize", "crop"], head=head)
    out = tmp_path / "m.keras"
    assert runner.invoke(app, ["export", str(run), "--out", str(out)]).exit_code == 0
    from headstart.ship.exported import load_exported

    model, names = load_exported(out)
    assert names == ["cat", "dog"] and model.get_layer("headstart_features").get_layer("resize_crop")
    p = model.predict_on_batch(np.full((2, 50, 90, 3), 128.0, np.float32))
    assert p.shape == (2, 2) and np.allclose(p.sum(axis=1), 1, atol=1e-5)


def test_head_to_keras_matches_predict_proba(tiny_run):
    from headstart.heads.run_reader import load_run

    info, head = load_run(tiny_run[0])
    x = np.random.default_rng(0).normal(0, 1, (5, head.n_features_in_)).astype(np.float32)
    np.testing.assert_allclose(head.to_keras().predict_on_batch(x), head.predict_proba(x), atol=1e-5)


# -- errors: one line, exit 2, nothing written ---------------------------------------------------


def test_export_errors_are_one_line_and_leave_nothing(tiny_run, tmp_path):
    run, _ = tiny_run
    cases = [
        (["export", str(run), "--out", str(tmp_path / "a.keras"), "--format", "tflite"], "--format among keras"),
        (["export", str(run), "--out", str(tmp_path / "a.h5")], "ending in .keras"),
        (["export", str(tmp_path / "nope"), "--out", str(tmp_path / "b.keras")], "Expected"),
    ]
    mine = tmp_path / "mine.keras"
    mine.write_bytes(b"someone else's file")
    cases.append((["export", str(run), "--out", str(mine)], "pass --overwrite"))
    cases.append((["export", str(run), "--out", str(mine), "--overwrite"], "replaces only those"))
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert mine.read_bytes() == b"someone else's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.keras"]


def test_overwrite_replaces_an_earlier_export(tiny_run, tmp_path):
    out = tmp_path / "m.keras"
    assert runner.invoke(app, ["export", str(tiny_run[0]), "--out", str(out)]).exit_code == 0
    assert runner.invoke(app, ["export", str(tiny_run[0]), "--out", str(out), "--overwrite"]).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", os.urandom(200)])
def test_predict_with_a_broken_keras_file_is_one_line(tmp_path, content, tiny_run):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(content)
    result = runner.invoke(app, ["predict", str(bad), str(sorted(tiny_run[1].rglob("*.jpg"))[0])])
    assert result.exit_code == 2 and "Expected a model written by headstart export" in result.stderr


# -- the other formats (slow: each converter takes a while) ---------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "fmt, need, files",
    [
        ("saved_model", "tensorflow", {"saved_model.pb", "labels.txt", "headstart.json"}),
        ("onnx", "tf2onnx", {"model.onnx", "labels.txt", "headstart.json"}),
        ("litert", "ai_edge_litert", {"model.tflite", "labels.txt", "headstart.json"}),
    ],
)
def test_other_formats_are_checked_folders_with_labels(tiny_run, tmp_path, fmt, need, files):
    pytest.importorskip(need)
    out = tmp_path / f"pets-{fmt}"
    result = runner.invoke(app, ["export", str(tiny_run[0]), "--out", str(out), "--format", fmt])
    assert result.exit_code == 0, result.output
    assert "checked against the Keras model" in result.stdout
    assert files <= {p.name for p in out.iterdir()}
    assert (out / "labels.txt").read_text().splitlines() == ["cat", "dog"]


# -- equality with predict on real photos and real weights (issue 8, part 2) ---------------------


@pytest.mark.slow
@needs_shared
def test_exported_mobilenet_agrees_with_predict_on_real_photos(tmp_path):
    """The exported model, fed each picture whole, vs `headstart predict`: the same top-1 class on
    all 300 photos, probabilities within 1e-3, and held-out accuracy within one point of the run's."""
    from headstart.cache import open_cache
    from headstart.heads.evaluation import _test_rows, load_run
    from headstart.ship.predict import predict

    run = _train(tmp_path, PETS, ["--backbone", "mobilenet", "--alpha", "0.25", "--weights", str(MOBILENET_WEIGHTS)])
    out = tmp_path / "pets.keras"
    assert runner.invoke(app, ["export", str(run), "--out", str(out)]).exit_code == 0
    pictures = sorted(PETS.rglob("*.jpg"))
    by_run = {p.path.resolve(): dict(p.top) for p in predict(run, pictures, top_k=2).predictions}
    by_file = {p.path.resolve(): dict(p.top) for p in predict(out, pictures, top_k=2).predictions}
    top = lambda d: max(d, key=d.get)  # noqa: E731
    assert all(top(by_run[k]) == top(by_file[k]) for k in by_run)
    assert max(abs(by_run[k][c] - by_file[k][c]) for k in by_run for c in by_run[k]) <= 1e-3
    info, _ = load_run(run)
    with open_cache(info["cache"]["path"]) as cache:
        test = [
            ((Path(cache.root) / cache.paths[i]).resolve(), cache.class_names[cache.labels[i]])
            for i in _test_rows(info, cache)
        ]
    accuracy = np.mean([top(by_file[p]) == y for p, y in test])
    run_accuracy = json.loads((run / "metrics.json").read_text())["test"]["accuracy"]
    assert abs(accuracy - run_accuracy) <= 0.01


@needs_shared
def test_exported_mobilenet_agrees_with_predict_on_every_picture_kind_made_from_real_photos(tmp_path):
    """Real weights and photos, where rounding a resized pixel moves the probabilities: 40 pets, and
    each picture kind made from pets photos, get the same top-1 class and probabilities within 1e-3."""
    from PIL import Image

    weights = ["--backbone", "mobilenet", "--alpha", "0.25", "--weights", str(MOBILENET_WEIGHTS)]
    run = _train(tmp_path, PETS, [*weights, "--limit-per-class", "20", "--precision", "float32"])
    out = tmp_path / "pets.keras"
    result = runner.invoke(app, ["export", str(run), "--out", str(out)])
    assert result.exit_code == 0 and "Note:" not in result.output, result.output
    photos = sorted(PETS.rglob("*.jpg"))
    sources = [np.asarray(Image.open(p).convert("RGB")) for p in photos[::37]]
    kinds = make_picture_kinds(tmp_path / "kinds", 224, sources=sources, per_kind=3)
    kinds["pets-sample"] = photos[::7]
    for kind, (same, diff) in _agreement(run, out, kinds).items():
        assert same and diff <= 1e-3, f"{kind}: top-1 the same: {same}, largest difference {diff:.3g}"


# -- headstart backbones ---------------------------------------------------------------------------


def test_backbones_lists_the_registry_with_measured_figures():
    from headstart.settings.backbones import BACKBONES

    result = runner.invoke(app, ["backbones"])
    assert result.exit_code == 0, result.output
    for name in BACKBONES:
        assert any(line.startswith(name + " ") for line in result.stdout.splitlines()), name
    assert "hub:PRESET" in result.stdout
    data = json.loads(runner.invoke(app, ["backbones", "--json"]).stdout)
    rows = {r["name"]: r for r in data["backbones"]}
    assert rows["convnext_tiny"]["preprocessing"] == "in_model" and rows["vgg16"]["input_size"] == 224
    assert set(data) == {"backbones", "measured_on"}


def test_backbones_shows_figures_only_with_the_machine_and_date_they_were_measured_on(monkeypatch):
    from headstart.settings import backbones

    old = {"backbones": {"vgg16": {"pictures_per_second": 0.6}}, "measured_on": "Xeon, 2 CPU cores"}
    monkeypatch.setattr(backbones, "_speeds_text", lambda: json.dumps(old))
    result = runner.invoke(app, ["backbones"])
    assert "not measured for this release" in result.stdout and "0.6" not in result.stdout
    new = {
        "backbones": {
            "vgg16": {
                "features": 4096,
                "weights_mb": 537.0,
                "float32": {"pictures_per_second": 6.4, "pipeline_pictures_per_second": 6.3, "ratio": 0.98},
                "bfloat16": {"pictures_per_second": 13.1, "pipeline_pictures_per_second": 12.9, "ratio": 0.98},
            }
        },
        "measured_on": {
            "cpu": "Xeon",
            "cores": 2,
            "batch_size": 8,
            "keras": "3.15.1",
            "backend": "tensorflow",
            "date": "2026-12-05",
            "max_load_average": 0.4,
        },
    }
    monkeypatch.setattr(backbones, "_speeds_text", lambda: json.dumps(new))
    result = runner.invoke(app, ["backbones"])
    vgg = next(line for line in result.stdout.splitlines() if line.startswith("vgg16 "))
    assert vgg.split()[-2:] == ["6.4", "13.1"]
    assert "measured on Xeon, 2 cores, batch 8, Keras 3.15.1 / tensorflow, on 2026-12-05" in result.stdout
    assert "load average at most 0.40" in result.stdout


def test_bench_backbones_refuses_figures_from_a_busy_machine():
    import importlib.util

    bench_file = Path(__file__).resolve().parents[1] / "bench" / "bench_backbones.py"
    spec = importlib.util.spec_from_file_location("bench_backbones", bench_file)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    quiet = [{"backbone": "vgg16", "precision": "float32", "model_cpu_per_wall": 1.9}]
    assert bench.busy_reason([0.3, 0.8], quiet, 1.2, 2) is None
    assert "load average reached 12.00" in bench.busy_reason([0.3, 12.0], quiet, 1.2, 2)
    starved = [{"backbone": "vgg16", "precision": "float32", "model_cpu_per_wall": 0.4}]
    assert "other work took the cores" in bench.busy_reason([0.3], starved, 1.2, 2)


def test_predict_refuses_a_keras_file_whose_weights_read_another_file(tiny_run, tmp_path):
    """A .keras file is a zip holding model.weights.h5: a dataset there stored in secret.txt is refused."""
    import zipfile

    import h5py

    good = tmp_path / "m.keras"
    assert runner.invoke(app, ["export", str(tiny_run[0]), "--out", str(good)]).exit_code == 0
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"SECRET-" * 100_000)
    weights = tmp_path / "model.weights.h5"
    with zipfile.ZipFile(good) as zf:
        weights.write_bytes(zf.read("model.weights.h5"))
        members = {n: zf.read(n) for n in zf.namelist() if n != "model.weights.h5"}
    names = []
    with h5py.File(weights, "r+") as f:
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        shape, dtype = f[names[-1]].shape, f[names[-1]].dtype
        del f[names[-1]]
        f.create_dataset(names[-1], shape=shape, dtype=dtype, external=[(str(secret), 0, int(np.prod(shape)) * 4)])
    bad = tmp_path / "bad.keras"
    with zipfile.ZipFile(bad, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
        zf.write(weights, "model.weights.h5")
    result = runner.invoke(app, ["predict", str(bad), str(sorted(tiny_run[1].rglob("*.jpg"))[0])])
    assert result.exit_code == 2, result.output
    assert f"model.weights.h5: /{names[-1]} keeps its bytes in another file ('{secret}')" in result.stderr


# -- --overwrite of a folder format: only what the export wrote (issue 21, finding 1) ------------


def _fake_saved_model(model, target, fmt):
    """What Keras' SavedModel export writes, without the converter's minutes: a few files and folders."""
    (target / "variables").mkdir(parents=True)
    (target / "saved_model.pb").write_bytes(b"graph")
    (target / "variables" / "variables.index").write_bytes(b"index")


def test_overwrite_of_a_folder_export_never_deletes_the_users_files(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr("headstart.ship.export._keras_export", _fake_saved_model)
    out = tmp_path / "app-model"
    args = ["export", str(tiny_run[0]), "--out", str(out), "--format", "saved_model", "--no-verify"]
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, [*args, "--overwrite"])  # an untouched export is replaced
    assert again.exit_code == 0, again.output

    (out / "app.py").write_text("print('mine')\n")  # the user's own files beside the export
    (out / "data").mkdir()
    (out / "data" / "notes.txt").write_text("mine")
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 2 and "Nothing was deleted" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert (out / "app.py").read_text() == "print('mine')\n" and (out / "data" / "notes.txt").read_text() == "mine"

    (out / "app.py").unlink()
    (out / "data" / "notes.txt").unlink()
    (out / "data").rmdir()
    (out / "labels.txt").write_text("edited\n")  # a file of the export, changed since: also the user's now
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 2 and (out / "labels.txt").read_text() == "edited\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app-model"]  # no staging folder left behind
    listed = json.loads((out / "headstart.json").read_text())["files"]  # the manifest: every file but itself
    assert set(listed) == {"saved_model.pb", "variables/variables.index", "labels.txt"}
