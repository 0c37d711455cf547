"""Shared fixtures: small generated datasets, the shared bad images and real pets, a tiny model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED = Path(os.environ.get("HEADSTART_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")
"""../shared beside the checkout; HEADSTART_SHARED=/path names it from a git worktree elsewhere."""
PETS = SHARED / "data" / "pets-sample"
BAD_IMAGES = SHARED / "data" / "bad-images"
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"

needs_shared = pytest.mark.skipif(not PETS.is_dir(), reason="../shared/data is not on this machine")

TINY_FINGERPRINT = {
    "backbone": "tiny",
    "layer": "embed",
    "pooling": None,
    "alpha": None,
    "weights": "none",
    "seed": 0,
    "keras_version": None,
    "input_size": 32,
    "resize": "squash",
    "jpeg_draft": True,
    "preprocessing": "keras.applications.mobilenet.preprocess_input",
    "precision": "float32",
    "dtype": "float16",
    "backend": "tensorflow",
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
    from headstart.extractor.options import make_config

    return make_config("tiny", weights="none", precision="float32")


def plant_problems(src: Path, dst: Path, seed: int = 0) -> dict[str, list]:
    """Copy the photo folder ``src`` to ``dst`` with known problems planted; returns what was planted.

    10 flipped labels (moved to the other class folder), 10 exact duplicates (same bytes, new
    name), 10 near duplicates (JPEG quality 60, resized to 80 %), 5 pictures that are not pets
    (text, stripes, a gradient, noise, shapes), as relative paths: ``{"flipped": [...],
    "exact": [(copy, original)], "near": [(copy, original)], "outliers": [...]}``.
    """
    import shutil

    from PIL import Image, ImageDraw

    shutil.copytree(src, dst, symlinks=False)
    classes = sorted(p.name for p in dst.iterdir() if p.is_dir())
    rng = np.random.default_rng(seed)
    files = {c: sorted(p.name for p in (dst / c).iterdir()) for c in classes}
    picks = {c: list(rng.permutation(files[c])) for c in classes}
    planted: dict[str, list] = {"flipped": [], "exact": [], "near": [], "outliers": []}
    for k in range(10):  # flipped: 5 of each class moved to the other
        c = classes[k % 2]
        other = classes[(k + 1) % 2]
        name = picks[c].pop()
        (dst / c / name).rename(dst / other / name)
        planted["flipped"].append(f"{other}/{name}")
    for k in range(10):
        c = classes[k % 2]
        name = picks[c].pop()
        shutil.copyfile(dst / c / name, dst / c / f"exact-copy-{name}")
        planted["exact"].append((f"{c}/exact-copy-{name}", f"{c}/{name}"))
    for k in range(10):
        c = classes[k % 2]
        name = picks[c].pop()
        with Image.open(dst / c / name) as im:
            im = im.convert("RGB")
            im = im.resize((round(im.width * 0.8), round(im.height * 0.8)), Image.BICUBIC)
            im.save(dst / c / f"near-copy-{name}", quality=60)
        planted["near"].append((f"{c}/near-copy-{name}", f"{c}/{name}"))
    w, h = 320, 240
    yy, xx = np.mgrid[0:h, 0:w]
    pictures = {
        "text": None,
        "stripes": np.stack([((xx // 16) % 2) * 255] * 3, axis=-1),
        "gradient": np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 128)], axis=-1),
        "noise": rng.integers(0, 256, (h, w, 3)),
        "shapes": None,
    }
    for k, (kind, arr) in enumerate(pictures.items()):
        if arr is None:
            im = Image.new("RGB", (w, h), "white")
            draw = ImageDraw.Draw(im)
            if kind == "text":
                for line in range(8):
                    draw.text((10, 10 + 28 * line), "INVOICE 2024 TOTAL DUE 1234.56 EUR", fill="black")
            else:
                draw.rectangle((20, 20, 140, 200), fill="red")
                draw.ellipse((160, 40, 300, 180), fill="blue")
        else:
            im = Image.fromarray(arr.astype("uint8"))
        c = classes[k % 2]
        im.save(dst / c / f"not-a-pet-{kind}.jpg", quality=90)
        planted["outliers"].append(f"{c}/not-a-pet-{kind}.jpg")
    return planted


def write_cache(path: Path, features, labels, paths, class_names, sha256=None, root: str = "/nowhere") -> Path:
    """A cache written directly (no model): ``features`` (N, D), ``labels`` indices into ``class_names``."""
    from headstart.cache import CacheHeader, CacheWriter

    features = np.asarray(features, dtype=np.float32)
    header = CacheHeader(
        dim=features.shape[1],
        dtype="float32",
        fingerprint={**TINY_FINGERPRINT, "dtype": "float32"},
        class_names=tuple(class_names),
        root=str(root),
    )
    with CacheWriter(path, header) as w:
        w.append(features, list(labels), list(paths), sha256=sha256)
        w.close(complete=True)
    return path


def planted_features(seed: int = 0, dim: int = 64, per_class: int = 40):
    """Three clustered classes with planted problems; returns (features, labels, paths, sha256, planted).

    Planted: rows 0-1 an exact duplicate (same digest), rows 2-3 a near duplicate, row 4 a flipped
    label (a class-0 row labelled 1), row 5 an outlier (far from every cluster).
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (3, dim))  # same-class rows at cosine ~0.5: far from duplicates
    labels = np.repeat(np.arange(3), per_class)
    x = centres[labels] + rng.normal(0, 1, (len(labels), dim))
    x[1] = x[0]
    x[3] = x[2] + rng.normal(0, 0.05, dim)
    labels[4] = 1  # row 4 is a class-0 row
    x[5] = rng.normal(0, 1, dim) * 15
    paths = [f"c{k}/{i}.jpg" for i, k in enumerate(labels)]
    sha = [f"{i:064x}" for i in range(len(labels))]
    sha[1] = sha[0]
    planted = {"exact": (paths[0], paths[1]), "near": (paths[2], paths[3]), "flipped": paths[4], "outlier": paths[5]}
    return x, labels, paths, sha, planted
