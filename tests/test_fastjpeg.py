"""The simplejpeg decoder: Pillow's pixels bit for bit, Pillow's outcome for bad files, and a cache keeps its decoder."""

from __future__ import annotations

import csv
import dataclasses
import io

import numpy as np
import pytest
from conftest import BAD_IMAGES, PETS, needs_shared
from decode_reference import reference_load_image
from PIL import Image
from typer.testing import CliRunner

from headstart.cli import app
from headstart.errors import BackboneError, CacheMismatchError, DecodeError
from headstart.extractor import fastjpeg
from headstart.extractor.decode import load_image
from headstart.extractor.options import make_config
from headstart.extractor.runner import extract
from headstart.settings.config import ExtractionConfig

needs_simplejpeg = pytest.mark.skipif(not fastjpeg.available(), reason="simplejpeg is not installed (.[fastjpeg])")
runner = CliRunner()


def jpeg(pixels: np.ndarray, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", **save)
    return buf.getvalue()


def photo_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colours and noise: every DCT coefficient and the chroma planes carry detail."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((w, h), Image.BICUBIC), dtype=np.float64)
    return np.clip(smooth + rng.normal(0, 10, smooth.shape), 0, 255).astype(np.uint8)


def generated_jpegs() -> dict[str, bytes]:
    """JPEGs of every chroma subsampling, progressive, greyscale, odd sizes, and each EXIF orientation."""
    out = {}
    for sub, name in ((0, "4:4:4"), (1, "4:2:2"), (2, "4:2:0")):
        out[name] = jpeg(photo_like(121, 203, sub), quality=90, subsampling=sub)
    out["progressive"] = jpeg(photo_like(250, 333, 3), quality=85, progressive=True)
    out["quality 40"] = jpeg(photo_like(64, 64, 4), quality=40)
    out["1x1"] = jpeg(photo_like(1, 1, 5))
    out["grey"] = jpeg(photo_like(77, 51, 6)[..., 0], quality=90)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        out[f"exif {orientation}"] = jpeg(photo_like(40, 90, 10 + orientation), quality=90, exif=exif)
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    out["xmp 6"] = jpeg(photo_like(40, 90, 20), quality=90, xmp=xmp)
    from headstart.ship.export import probe_pictures  # what export measures its agreement on

    out.update({f"export probe {k}": v for k, v in probe_pictures(32).items()})
    return out


def outcome(data: bytes, size, decoder: str, resize: str = "squash", resampler: str = "float32"):
    """The pixels, or the reason of the DecodeError."""
    try:
        return load_image(io.BytesIO(data), size, resize, False, resampler, decoder)
    except DecodeError as err:
        return f"DecodeError: {err}"


def same(a, b) -> bool:
    return a == b if isinstance(a, str) or isinstance(b, str) else a.dtype == b.dtype and np.array_equal(a, b)


@needs_simplejpeg
@needs_shared
def test_simplejpeg_decodes_real_photos_to_pillows_pixels_bit_for_bit():
    paths = sorted(PETS.rglob("*.jpg"))
    assert len(paths) >= 100
    for path in paths:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            want = np.asarray(img.convert("RGB"))
            got = fastjpeg.decode(img, data)
        assert got is not None, path.name
        assert np.array_equal(np.asarray(got), want), path.name


@needs_simplejpeg
def test_simplejpeg_gives_pillows_pixels_for_every_kind_of_jpeg_and_orientation():
    for name, data in generated_jpegs().items():
        with Image.open(io.BytesIO(data)) as img:
            assert fastjpeg.decode(img, data) is not None, name  # it took the fast path
        for size, resize, resampler in (
            ((32, 32), "squash", "float32"),
            ((31, 47), "crop", "float32"),
            ((224, 224), "squash", "float32"),
            ((32, 32), "squash", "pillow-uint8"),
        ):
            got = outcome(data, size, "simplejpeg", resize, resampler)
            assert same(got, outcome(data, size, "pillow", resize, resampler)), (name, size, resize, resampler)
            if resampler == "float32":
                assert np.array_equal(got, reference_load_image(data, size, resize)), (name, size, resize)


@needs_simplejpeg
def test_the_exif_and_xmp_orientation_turns_the_fast_path_upright():
    data = generated_jpegs()
    upright = outcome(data["exif 1"], (90, 40), "simplejpeg")
    sideways = outcome(data["exif 6"], (90, 40), "simplejpeg")  # stored 40 x 90, shown 90 high
    assert upright.shape == sideways.shape == (90, 40, 3)
    assert same(outcome(data["xmp 6"], (90, 40), "simplejpeg"), outcome(data["xmp 6"], (90, 40), "pillow"))


def manifest():
    if not BAD_IMAGES.is_dir():
        return []
    with open(BAD_IMAGES / "MANIFEST.tsv") as fh:
        return [r["file"] for r in csv.DictReader(fh, delimiter="\t") if r["expected"] != "ignored"]


@needs_simplejpeg
@needs_shared
@pytest.mark.parametrize("name", manifest() or ["none"])
def test_bad_images_end_as_with_pillow_through_the_simplejpeg_decoder(name):
    """Same pixels or the same reason: truncated, CMYK, 16-bit, EXIF-rotated, garbled, a bomb..."""
    data = (BAD_IMAGES / name).read_bytes()
    got = outcome(data, (224, 224), "simplejpeg")
    assert same(got, outcome(data, (224, 224), "pillow")), name
    if not isinstance(got, str):
        assert np.array_equal(got, reference_load_image(data, (224, 224)))


@needs_simplejpeg
@needs_shared
@pytest.mark.parametrize("name", ["cmyk.jpg", "truncated.jpg", "garbled-middle.jpg", "tiff-named.jpg", "gray16.png"])
def test_what_simplejpeg_would_read_otherwise_is_left_to_pillow(name):
    data = (BAD_IMAGES / name).read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        assert fastjpeg.decode(img, data) is None


def test_the_fingerprint_records_a_decoder_other_than_pillow(tiny_config):
    """Caches decoded by Pillow keep the fingerprint (and digest) they had before the decoder was recorded."""
    assert tiny_config.decoder == "pillow" and "decoder" not in tiny_config.fingerprint()
    fast = dataclasses.replace(tiny_config, decoder="simplejpeg")
    assert fast.fingerprint()["decoder"] == "simplejpeg" and fast.digest() != tiny_config.digest()
    assert ExtractionConfig.from_fingerprint(fast.fingerprint()) == fast
    assert ExtractionConfig.from_fingerprint(tiny_config.fingerprint()).decoder == "pillow"
    with pytest.raises(BackboneError, match="Expected decoder among pillow, simplejpeg. Received: 'turbo'"):
        ExtractionConfig.from_fingerprint({**fast.fingerprint(), "decoder": "turbo"})
    with pytest.raises(BackboneError, match="decoder is 1 of type integer"):
        ExtractionConfig.from_fingerprint({**fast.fingerprint(), "decoder": 1})


def test_a_cache_refuses_to_be_extended_with_another_decoder(image_folder, tiny_config, tmp_path):
    """The check comes before any decoding: no simplejpeg needed to see the refusal."""
    out = tmp_path / "c.h5"
    extract(image_folder, out, tiny_config, batch_size=4)
    fast = dataclasses.replace(tiny_config, decoder="simplejpeg")
    with pytest.raises(CacheMismatchError, match="decoder: None \\(cache\\) vs 'simplejpeg' \\(now\\)"):
        extract(image_folder, out, fast, batch_size=4)


@needs_simplejpeg
def test_caches_of_two_decoders_are_not_merged_and_not_resumed_by_the_cli(image_folder, tiny_config, tmp_path):
    fast = dataclasses.replace(tiny_config, decoder="simplejpeg")
    for i, config in enumerate((fast, tiny_config)):
        extract(image_folder, tmp_path / f"part-{i}.h5", config, batch_size=4, shards=2, shard=i)
    result = runner.invoke(
        app, ["merge", str(tmp_path / "part-0.h5"), str(tmp_path / "part-1.h5"), "--out", str(tmp_path / "m.h5")]
    )
    assert result.exit_code == 2 and "decoder" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m.h5").exists()
    base = ["extract", str(image_folder), "--out", str(tmp_path / "part-0.h5"), "-q", "--backbone", "tiny"]
    base += ["--weights", "none", "--precision", "float32", "--shards", "2", "--shard", "0"]
    result = runner.invoke(app, base)
    assert result.exit_code == 2 and "decoder: 'simplejpeg' (cache) vs None (now)" in " ".join(result.stderr.split())
    assert runner.invoke(app, [*base, "--decoder", "simplejpeg"]).exit_code == 0


def test_the_simplejpeg_decoder_without_simplejpeg_says_what_to_install(image_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(fastjpeg, "available", lambda: False)
    with pytest.raises(BackboneError, match=r"pip install -e '\.\[fastjpeg\]'"):
        make_config("tiny", weights="none", precision="float32", decoder="simplejpeg")
    with pytest.raises(BackboneError, match="no module simplejpeg"):  # a cache made elsewhere, read here
        load_image(next(image_folder.rglob("*.jpg")), (32, 32), decoder="simplejpeg")
    args = ["extract", str(image_folder), "--out", str(tmp_path / "c.h5"), "--backbone", "tiny", "--weights", "none"]
    result = runner.invoke(app, [*args, "--decoder", "simplejpeg"])
    assert result.exit_code == 2 and "fastjpeg" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "c.h5").exists()


def test_the_simplejpeg_decoder_is_refused_with_draft_mode_and_unknown_decoders_are_named():
    with pytest.raises(BackboneError, match="Expected --decoder pillow with --draft"):
        make_config("tiny", weights="none", precision="float32", decoder="simplejpeg", jpeg_draft=True)
    with pytest.raises(BackboneError, match="Expected --decoder among pillow, simplejpeg. Received: 'libjpeg'"):
        make_config("tiny", weights="none", precision="float32", decoder="libjpeg")
