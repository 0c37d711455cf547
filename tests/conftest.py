"""Shared fixtures: small generated datasets, the shared bad images and real pets, a tiny model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PETS = SHARED / "data" / "pets-sample"
BAD_IMAGES = SHARED / "data" / "bad-images"
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"

needs_shared = pytest.mark.skipif(not PETS.is_dir(), reason="../shared/data is not on this machine")

TINY_FINGERPRINT = {
    "backbone": "tiny", "layer": "embed", "pooling": None, "alpha": None, "weights": "none", "seed": 0,
    "keras_version": None, "input_size": 32, "resize": "squash", "jpeg_draft": True,
    "preprocessing": "keras.applications.mobilenet.preprocess_input", "precision": "float32",
    "dtype": "float16", "backend": "tensorflow",
}
"""A complete, valid fingerprint (the tiny backbone's) for caches written without a model."""


def make_images(root: Path, per_class: int = 6, classes=("cat", "dog"), size=(40, 48), seed: int = 0) -> Path:
    """A folder of small JPEGs, one sub-folder per class, colours that tell the classes apart."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = [(200, 60, 60), (60, 60, 200), (60, 200, 60), (200, 200, 60)]
    for c, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = np.clip(rng.normal(0, 25, (*size, 3)) + colours[c % len(colours)], 0, 255).astype("uint8")
            Image.fromarray(arr).save(d / f"{name}.{i}.jpg", quality=90)
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """12 small JPEGs in cat/ and dog/."""
    return make_images(tmp_path / "images")


@pytest.fixture(scope="session")
def tiny_config():
    """The tiny random backbone at 32 px: builds in a second, runs thousands of pictures/s."""
    from headstart.extractor.backbones import make_config

    return make_config("tiny", weights="none", precision="float32")
