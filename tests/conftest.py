"""Shared fixtures: small generated datasets, the shared bad images and real pets, a tiny model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED = Path(os.environ.get("HEADSTART_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")
"""../shared beside the checkout; HEADSTART_SHARED points elsewhere (a worktree one level deeper)."""
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


PICTURE_KINDS = ("smaller", "larger", "non-square", "exif-rotated", "grayscale", "rgba", "16-bit")
"""Pictures whose decoding or resize can part ways between extraction, predict and export."""


def make_picture_kinds(root: Path, input_size: int, sources=None, per_kind: int = 4, seed: int = 0):
    """Write ``per_kind`` pictures of each of `PICTURE_KINDS` under ``root/KIND/``; returns
    ``{kind: [paths]}``. ``sources``: RGB uint8 arrays to derive them from (real photos), else
    coloured noise. smaller: under the input size (upscaled); larger: over 4x (downscaled, and
    draft-decodable as JPEG); non-square: 3:1; exif-rotated: a JPEG stored sideways with
    orientation 6; grayscale: mode L; rgba: PNG with varying alpha; 16-bit: PNG mode I;16."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = [(200, 60, 60), (60, 60, 200)]

    def picture(i: int, h: int, w: int) -> Image.Image:
        if sources is not None:
            return Image.fromarray(sources[i % len(sources)]).resize((w, h), Image.BICUBIC)
        base = np.clip(rng.normal(0, 40, (h, w, 3)) + colours[i % 2], 0, 255).astype(np.uint8)
        return Image.fromarray(base)

    n = input_size
    out = {}
    for kind in PICTURE_KINDS:
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        out[kind] = []
        for i in range(per_kind):
            if kind == "smaller":
                img, name = picture(i, n * 3 // 7 + i, n * 3 // 7 + 2 * i), f"{i}.jpg"
                img.save(folder / name, quality=92)
            elif kind == "larger":
                img, name = picture(i, n * 9 // 2 + i, n * 4 + 3 * i), f"{i}.jpg"
                img.save(folder / name, quality=92)
            elif kind == "non-square":
                img, name = picture(i, n // 2 + i, n * 3 // 2 + i), f"{i}.png"
                img.save(folder / name)
            elif kind == "exif-rotated":
                img, name = picture(i, n * 4 // 5, n * 6 // 5 + i), f"{i}.jpg"
                exif = Image.Exif()
                exif[0x0112] = 6  # rotated 90 degrees: the viewer turns it upright
                img.save(folder / name, quality=92, exif=exif)
            elif kind == "grayscale":
                img, name = picture(i, n + 5 * i, n * 5 // 4).convert("L"), f"{i}.png"
                img.save(folder / name)
            elif kind == "rgba":
                img = picture(i, n * 2 - i, n * 3 // 2).convert("RGBA")
                alpha = np.linspace(40, 255, img.width * img.height).reshape(img.height, img.width)
                img.putalpha(Image.fromarray(alpha.astype(np.uint8)))
                name = f"{i}.png"
                img.save(folder / name)
            else:  # 16-bit
                grey = np.asarray(picture(i, n * 3 // 2, n + i).convert("L"), dtype=np.uint16) * 257
                grey = grey + rng.integers(0, 257, grey.shape).astype(np.uint16)
                img, name = Image.fromarray(grey.astype("<u2")), f"{i}.png"
                img.save(folder / name)
            out[kind].append(folder / name)
    return out


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
    label (a class-0 row labelled 1), row 5 an outlier (far from every cluster), rows 6-9 a group
    of outliers in class 0 (around one point far from every cluster, each other's nearest
    neighbours: a score from 1 or 5 nearest neighbours ranks them below the top 6).
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (3, dim))  # same-class rows at cosine ~0.5: far from duplicates
    labels = np.repeat(np.arange(3), per_class)
    x = centres[labels] + rng.normal(0, 1, (len(labels), dim))
    x[1] = x[0]
    x[3] = x[2] + rng.normal(0, 0.05, dim)
    labels[4] = 1  # row 4 is a class-0 row
    x[5] = rng.normal(0, 1, dim) * 15
    group = np.random.default_rng((seed, 7)).normal(0, 1, (5, dim))
    x[6:10] = group[0] * 3 + group[1:] * 2
    paths = [f"c{k}/{i}.jpg" for i, k in enumerate(labels)]
    sha = [f"{i:064x}" for i in range(len(labels))]
    sha[1] = sha[0]
    planted = {
        "exact": (paths[0], paths[1]),
        "near": (paths[2], paths[3]),
        "flipped": paths[4],
        "outlier": paths[5],
        "group": paths[6:10],
    }
    return x, labels, paths, sha, planted


def off_topic_picture(kind: str, rng: np.random.Generator, size: int = 224):
    """One generated picture that is not a pet, of the ``kind`` "screenshot" (a window of text),
    "logo" (a shape on a flat field), "noise", "gradient" or "stripes", or a demo shape
    (`headstart.demo.draw_picture`: "circle", "square", ...). Pictures of one kind share their
    layout and differ in colours, text and placement, like the logos or screenshots a scraped
    folder holds several times."""
    from PIL import Image, ImageDraw

    yy, xx = np.mgrid[0:size, 0:size]
    if kind == "noise":
        return Image.fromarray(rng.integers(0, 256, (size, size, 3)).astype("uint8"))
    if kind == "gradient":
        return Image.fromarray(
            np.stack([xx * 255 // size, yy * 255 // size, np.full_like(xx, 128)], -1).astype("uint8")
        )
    if kind == "stripes":
        return Image.fromarray(np.stack([((xx // 16) % 2) * 255] * 3, axis=-1).astype("uint8"))
    if kind == "screenshot":
        im = Image.new("RGB", (size, size), "white")
        draw = ImageDraw.Draw(im)
        draw.rectangle((0, 0, size, 24), fill=tuple(int(v) for v in rng.integers(40, 120, 3)))
        for line in range(9):
            words = "".join(chr(int(c)) for c in rng.integers(65, 91, int(rng.integers(12, 30))))
            draw.text((8, 32 + 20 * line), words, fill="black")
        return im
    if kind == "logo":
        im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(180, 256, 3)))
        draw = ImageDraw.Draw(im)
        r = size * rng.uniform(0.25, 0.35)
        cx, cy = size / 2 + rng.uniform(-20, 20), size / 2 + rng.uniform(-20, 20)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(v) for v in rng.integers(0, 120, 3)))
        draw.text((cx - 20, cy - 5), "ACME", fill="white")
        return im
    from headstart.demo import draw_picture

    return draw_picture(kind, rng, size)


def plant_off_topic(
    src: Path,
    dst: Path,
    kinds=("screenshot", "logo"),
    singles=("noise", "gradient", "stripes"),
    per_group: int = 3,
    seed: int = 0,
) -> dict[str, list]:
    """Copy the photo folder ``src`` to ``dst`` with off-topic pictures added; returns them.

    A group of ``per_group`` pictures of each of ``kinds``, and 3 singletons of ``singles``
    (`off_topic_picture`), spread over the class folders in turn, as relative paths:
    ``{"groups": [[...], [...]], "singletons": [...]}``. A group's pictures are each other's
    nearest neighbours: a score that looks only at a picture's few nearest neighbours finds them
    typical.
    """
    import shutil

    shutil.copytree(src, dst, symlinks=False)
    classes = sorted(p.name for p in dst.iterdir() if p.is_dir())
    planted: dict[str, list] = {"groups": [], "singletons": []}
    k = 0
    for g, kind in enumerate(kinds):
        group = []
        for i in range(per_group):
            name = f"{classes[k % len(classes)]}/off-topic-{kind}-{i}.jpg"
            k += 1
            off_topic_picture(kind, np.random.default_rng((seed, g, i))).save(dst / name, quality=90)
            group.append(name)
        planted["groups"].append(group)
    for i, kind in enumerate(singles):
        name = f"{classes[k % len(classes)]}/off-topic-{kind}.jpg"
        k += 1
        off_topic_picture(kind, np.random.default_rng((seed, 99, i))).save(dst / name, quality=90)
        planted["singletons"].append(name)
    return planted


def plant_copies(src: Path, dst: Path, per_kind: int = 10, seed: int = 0) -> dict[str, list]:
    """Copy the photo folder ``src`` to ``dst`` with altered copies of some photos added.

    Per kind, ``per_kind`` photos (each used once) get a copy beside them: "reencoded" (JPEG quality
    50), "resized" (to 50 %, quality 90), "cropped" (5 % off each side, quality 90). Returns
    ``{kind: [(copy, original), ...]}`` as relative paths.
    """
    import shutil

    from PIL import Image

    shutil.copytree(src, dst, symlinks=False)
    classes = sorted(p.name for p in dst.iterdir() if p.is_dir())
    rng = np.random.default_rng(seed)
    files = {c: list(rng.permutation(sorted(p.name for p in (dst / c).iterdir()))) for c in classes}
    planted: dict[str, list] = {"reencoded": [], "resized": [], "cropped": []}
    k = 0
    for kind in planted:
        for _ in range(per_kind):
            c = classes[k % len(classes)]
            k += 1
            name = files[c].pop()
            with Image.open(dst / c / name) as im:
                im = im.convert("RGB")
                w, h = im.size
                if kind == "resized":
                    im = im.resize((max(1, w // 2), max(1, h // 2)), Image.BICUBIC)
                elif kind == "cropped":
                    im = im.crop((round(0.05 * w), round(0.05 * h), round(0.95 * w), round(0.95 * h)))
                im.save(dst / c / f"{kind}-copy-{name}", quality=50 if kind == "reencoded" else 90)
            planted[kind].append((f"{c}/{kind}-copy-{name}", f"{c}/{name}"))
    return planted
