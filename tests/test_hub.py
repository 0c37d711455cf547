"""KerasHub backbones: small random presets built here (no download): pooling, fingerprint, resume, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images
from typer.testing import CliRunner

from headstart.cli import app
from headstart.errors import BackboneError, WeightsDownloadError

keras_hub = pytest.importorskip("keras_hub")
runner = CliRunner()


def _dinov2(size: int = 56):
    return keras_hub.models.DINOV2Backbone(
        patch_size=14,
        num_layers=2,
        hidden_dim=32,
        num_heads=2,
        intermediate_dim=64,
        image_shape=(size, size, 3),
        position_embedding_shape=(size, size),
    )


def _clip(size: int = 32):
    vision = keras_hub.models.CLIPVisionEncoder(
        patch_size=8, hidden_dim=16, num_layers=1, num_heads=2, intermediate_dim=32, image_shape=(size, size, 3)
    )
    text = keras_hub.models.CLIPTextEncoder(
        vocabulary_size=50,
        embedding_dim=16,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        intermediate_dim=32,
        max_sequence_length=8,
    )
    return keras_hub.models.CLIPBackbone(vision, text, projection_dim=12)


def _siglip(size: int = 32):
    vision = keras_hub.models.SigLIPVisionEncoder(
        patch_size=8, hidden_dim=16, num_layers=1, num_heads=2, intermediate_dim=32, image_shape=(size, size, 3)
    )
    text = keras_hub.models.SigLIPTextEncoder(
        vocabulary_size=50,
        embedding_dim=16,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        intermediate_dim=32,
        max_sequence_length=8,
    )
    return keras_hub.models.SigLIPBackbone(vision, text)


@pytest.fixture(scope="module")
def dinov2_folder(tmp_path_factory) -> Path:
    """A 2-layer DINOv2 with random weights saved as a KerasHub preset folder (as a download would be)."""
    folder = tmp_path_factory.mktemp("hub") / "dinov2_tiny"
    _dinov2().save_to_preset(str(folder))
    return folder


def test_dinov2_gives_the_class_token_and_a_fingerprint_with_the_folder_digest(dinov2_folder):
    from headstart.extractor.embed import Embedder
    from headstart.extractor.model import build_model
    from headstart.extractor.options import make_config
    from headstart.settings.config import ExtractionConfig

    config = make_config("hub:dinov2_small", weights=str(dinov2_folder), precision="float32")
    assert (config.layer, config.pooling, config.input_size, config.preprocessing) == (
        "class_token",
        None,
        56,
        "imagenet_mean_std",
    )
    assert config.weights.startswith("sha256:") and config.weights_path == str(dinov2_folder.resolve())
    assert ExtractionConfig.from_fingerprint(config.fingerprint(), config.weights_path) == config

    pixels = np.random.default_rng(0).integers(0, 256, (2, 56, 56, 3)).astype(np.uint8)
    rows = Embedder(config, batch_size=2)(list(pixels))
    assert rows.shape == (2, 32)
    # The class token: position 0 of the backbone's (layer-normalised) token sequence.
    backbone = keras_hub.models.DINOV2Backbone.from_preset(str(dinov2_folder))
    x = (pixels / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    tokens = np.asarray(backbone.predict_on_batch({"images": x.astype(np.float32)}))
    np.testing.assert_allclose(rows, tokens[:, 0], rtol=1e-4, atol=1e-4)
    assert build_model(config).get_layer("class_token") is not None


@pytest.mark.slow
def test_extract_resume_train_export_predict_with_a_hub_backbone(dinov2_folder, tmp_path):
    images = make_images(tmp_path / "images", per_class=8)
    cache = tmp_path / "hub.h5"
    args = [
        "extract",
        str(images),
        "--out",
        str(cache),
        "--backbone",
        "hub:dinov2_small",
        "--weights",
        str(dinov2_folder),
        "-q",
    ]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "Extracted 0" in again.stdout and "16 already there" in again.stdout
    info = json.loads(runner.invoke(app, ["info", str(cache), "--json"]).stdout)
    assert info["fingerprint"]["backbone"] == "hub:dinov2_small" and info["feature_shape"] == [16, 32]

    assert (
        runner.invoke(
            app, ["compare", str(cache), "--out", str(tmp_path / "runs"), "--heads", "logreg", "--no-plots"]
        ).exit_code
        == 0
    )
    out = tmp_path / "hub.keras"
    result = runner.invoke(app, ["export", str(tmp_path / "runs" / "logreg"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    files = sorted(images.rglob("*.jpg"))
    a, b = (
        json.loads(runner.invoke(app, ["predict", str(m), *map(str, files), "--json", "--top-k", "2"]).stdout)
        for m in (tmp_path / "runs" / "logreg", out)
    )
    assert [p["class"] for p in a["predictions"]] == [q["class"] for q in b["predictions"]]
    diffs = [
        abs(s["probability"] - next(u["probability"] for u in q["top"] if u["class"] == s["class"]))
        for p, q in zip(a["predictions"], b["predictions"])
        for s in p["top"]
    ]
    assert len(diffs) == 2 * len(files) and max(diffs) <= 1e-3


@pytest.mark.parametrize(
    "make, family, layer, dim",
    [
        pytest.param(_clip, "clip", "image_embedding", 12, marks=pytest.mark.slow),
        pytest.param(_siglip, "siglip", "image_embedding", 16, marks=pytest.mark.slow),
    ],
)
def test_clip_and_siglip_give_the_image_embedding(tmp_path, make, family, layer, dim):
    from headstart.extractor.embed import Embedder
    from headstart.extractor.options import make_config
    from headstart.settings import hub

    backbone = make()
    backbone.save_to_preset(str(tmp_path / family))
    preset = next(name for name, (f, _) in hub.presets().items() if f.name == family)
    config = make_config(f"hub:{preset}", weights=str(tmp_path / family), precision="float32")
    assert config.layer == layer and config.input_size == 32
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    rows = Embedder(config, batch_size=2)(list(pixels))
    x = keras_hub.models.Backbone.from_preset(str(tmp_path / family))
    pre = hub.NORMALISATION[config.preprocessing]
    expected = x.get_vision_embeddings(((pixels / 255.0 - np.array(pre[0])) / np.array(pre[1])).astype(np.float32))
    np.testing.assert_allclose(rows, np.asarray(expected), rtol=1e-4, atol=1e-4)
    assert rows.shape == (2, dim)


def test_a_preset_name_offline_is_one_line_naming_the_way_out(monkeypatch):
    from keras_hub.src.utils import preset_utils

    from headstart.extractor.options import make_config

    def offline(*args, **kwargs):
        raise ConnectionError("Max retries exceeded (NameResolutionError: api.kaggle.com)")

    monkeypatch.setattr(preset_utils, "load_json", offline)
    with pytest.raises(WeightsDownloadError) as err:
        make_config("hub:dinov2_small")
    text = str(err.value)
    assert "kaggle://keras/dinov2/keras/dinov2_small/" in text and "--weights FOLDER" in text
    assert "\n" not in text
    result = runner.invoke(app, ["extract", ".", "--out", "x.h5", "--backbone", "hub:dinov2_small"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "backbone, weights, message",
    [
        ("hub:dinov2_tiniest", "none", "preset of KerasHub"),
        ("hub:dinov2_small", "/no/such/folder", "no such folder"),
    ],
)
def test_bad_hub_options_are_clear_errors(backbone, weights, message):
    from headstart.extractor.options import make_config

    with pytest.raises(BackboneError, match=message):
        make_config(backbone, weights=weights)


def test_a_folder_of_another_family_is_refused(tmp_path, dinov2_folder):
    from headstart.extractor.options import make_config

    with pytest.raises(BackboneError, match="Expected a CLIPBackbone preset"):
        make_config("hub:clip_vit_base_patch16", weights=str(dinov2_folder))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"weights": "kaggle://evil"}, "kaggle://.../VERSION"),
        ({"layer": "block5_pool"}, "layer and preprocessing of a hub family"),
        ({"backbone": "hub:../../etc"}, "preset name"),
        ({"pooling": "avg"}, "pooling"),
    ],
)
def test_hub_fingerprints_from_files_are_checked(dinov2_folder, change, message):
    from headstart.extractor.options import make_config
    from headstart.settings.config import ExtractionConfig

    fp = make_config("hub:dinov2_small", weights=str(dinov2_folder), precision="float32").fingerprint()
    with pytest.raises(BackboneError, match=message):
        ExtractionConfig.from_fingerprint({**fp, **change})
