"""Decoding: every awkward file of ../shared/data/bad-images ends as its manifest says."""

import csv

import numpy as np
import pytest
from conftest import BAD_IMAGES, needs_shared
from PIL import Image

from headstart.extractor.decode import DecodeError, load_image
from headstart.extractor.scan import is_image_file


def manifest():
    if not BAD_IMAGES.is_dir():
        return []
    with open(BAD_IMAGES / "MANIFEST.tsv") as fh:
        return [(r["file"], r["expected"]) for r in csv.DictReader(fh, delimiter="\t")]


@needs_shared
@pytest.mark.parametrize("name, expected", manifest() or [("none", "ok")])
def test_bad_images_end_as_the_manifest_says(name, expected):
    path = BAD_IMAGES / name
    if expected == "ignored":
        assert not is_image_file(path)
        return
    assert is_image_file(path)
    if expected == "skip":
        with pytest.raises(DecodeError) as err:
            load_image(path, (224, 224))
        assert str(err.value)  # a reason to record
    elif expected == "ok":
        arr = load_image(path, (224, 224))
        assert arr.shape == (224, 224, 3) and arr.dtype == np.uint8
    else:  # either: decoded or a clean DecodeError, never anything else
        try:
            assert load_image(path, (224, 224)).shape == (224, 224, 3)
        except DecodeError:
            pass


@needs_shared
def test_exif_orientation_is_applied():
    with Image.open(BAD_IMAGES / "exif-rotated.jpg") as img:
        w, h = img.size
        expected = np.asarray(img.transpose(Image.Transpose.ROTATE_270).convert("RGB").resize((64, 32)))
    assert w != h
    got = load_image(BAD_IMAGES / "exif-rotated.jpg", (32, 64), draft=False)
    assert np.abs(got.astype(int) - expected.astype(int)).mean() < 10


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    arr = np.full((8, 8), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    Image.fromarray(arr).save(tmp_path / "g16.png")
    out = load_image(tmp_path / "g16.png", (8, 8))
    assert 120 <= out.mean() <= 135


def test_squash_and_crop(tmp_path):
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :20] = 255  # white left quarter
    Image.fromarray(arr).save(tmp_path / "wide.png")
    squashed = load_image(tmp_path / "wide.png", (10, 10), resize="squash")
    cropped = load_image(tmp_path / "wide.png", (10, 10), resize="crop")
    assert squashed[:, 0].mean() > 200  # the white quarter survives a squash
    assert cropped[:, 0].mean() < 60  # and is cut off by a centre crop


def test_draft_mode_changes_little(tmp_path):
    rng = np.random.default_rng(0)
    arr = (np.linspace(0, 255, 1000)[None, :, None] + rng.normal(0, 5, (800, 1000, 3))).clip(0, 255)
    Image.fromarray(arr.astype(np.uint8)).save(tmp_path / "big.jpg", quality=92)
    a = load_image(tmp_path / "big.jpg", (224, 224), draft=True).astype(float)
    b = load_image(tmp_path / "big.jpg", (224, 224), draft=False).astype(float)
    assert np.abs(a - b).mean() < 3


def test_missing_file_is_a_decode_error(tmp_path):
    with pytest.raises(DecodeError):
        load_image(tmp_path / "nope.jpg", (8, 8))


@pytest.mark.parametrize("resize", ["squash", "crop"])
@pytest.mark.parametrize("shape", [(20, 20), (45, 61), (300, 140), (32, 32)])
def test_the_float32_resampler_computes_what_keras_resizing_computes(shape, resize):
    """Extraction and the exported model's ``Resizing(antialias=True)`` give the same pixels,
    upscaling or downscaling, squashed or centre-cropped; Pillow on 8-bit pixels does not."""
    import io

    import keras
    from PIL import Image

    from headstart.extractor.decode import load_image

    rng = np.random.default_rng(sum(shape))
    pixels = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    layer = keras.layers.Resizing(
        32, 32, interpolation="bilinear", antialias=True, crop_to_aspect_ratio=resize == "crop"
    )
    want = np.asarray(layer(pixels[None].astype(np.float32)))[0]
    got = load_image(io.BytesIO(buf.getvalue()), (32, 32), resize, resampler="float32")
    assert got.dtype == np.float32 and got.shape == (32, 32, 3)
    assert np.abs(got - want).max() < 1e-2
    if shape != (32, 32):
        old = load_image(io.BytesIO(buf.getvalue()), (32, 32), resize, resampler="pillow-uint8")
        assert np.abs(old - want).max() > 0.25


@pytest.mark.parametrize("resize", ["squash", "crop"])
@pytest.mark.parametrize(
    "shape, size",
    [
        ((20, 20), (32, 32)),
        ((45, 61), (32, 32)),
        ((300, 140), (32, 32)),
        ((375, 500), (224, 224)),
        ((224, 224), (224, 224)),
        ((1, 1), (8, 8)),
        ((97, 13), (31, 47)),
    ],
)
def test_the_float32_resize_gives_the_numbers_of_its_numpy_reference(shape, size, resize):
    """Channels split and made float by Pillow (faster): bit for bit the numbers of the float32
    numpy copy it replaced, so caches made before and after extend one another."""
    from decode_reference import reference_resize_float32

    from headstart.extractor.decode import resize_float32

    pixels = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    want = reference_resize_float32(pixels, size, resize)
    for picture in (pixels, Image.fromarray(pixels)):
        got = resize_float32(picture, size, resize)
        assert got.dtype == np.float32 and got.shape == (*size, 3)
        assert np.array_equal(got, want)


@needs_shared
def test_load_image_gives_the_pixels_of_the_reference_path_for_every_awkward_file():
    """Transposing in place (no copy of upright pictures) changed no pixel: bad images, EXIF-rotated
    ones, and real photos, squashed and cropped."""
    import io

    from decode_reference import reference_load_image

    paths = (
        sorted(BAD_IMAGES.iterdir())[:40] + sorted(p for p in (BAD_IMAGES.parent / "pets-sample").rglob("*.jpg"))[:8]
    )
    compared = 0
    for path in paths:
        data = path.read_bytes()
        for resize in ("squash", "crop"):
            try:
                want = reference_load_image(data, (64, 48), resize)
            except Exception:
                with pytest.raises(DecodeError):
                    load_image(io.BytesIO(data), (64, 48), resize, draft=False, resampler="float32")
                continue
            got = load_image(io.BytesIO(data), (64, 48), resize, draft=False, resampler="float32")
            assert np.array_equal(got, want), (path.name, resize)
            compared += 1
    assert compared >= 2 * 20
