"""The CLI of extract, info and download: exit codes, one-line messages, no tracebacks."""

import json

import pytest
from typer.testing import CliRunner

from headstart.cli import app

runner = CliRunner()
TINY = [
    "--backbone",
    "tiny",
    "--weights",
    "none",
    "--precision",
    "float32",
    "--batch-size",
    "4",
    "-q",
    "--commit-seconds",
    "0",
]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_clean_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    for fragment in fragments:
        assert fragment in " ".join(result.output.split()), result.output


def test_help_lists_every_command_with_examples():
    result = invoke("--help")
    assert result.exit_code == 0
    for name in ("download", "extract", "info"):
        assert name in result.output
    assert "Example: headstart extract" in invoke("extract", "--help").output


def test_extract_then_info(image_folder, tmp_path):
    (image_folder / "dog" / "empty.jpg").write_bytes(b"")
    out = tmp_path / "c.h5"
    result = invoke("extract", image_folder, "--out", out, *TINY)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Extracted 12, skipped 1 (see: headstart info" in text and "12 rows in" in text
    info = invoke("info", out)
    assert info.exit_code == 0
    assert "12 (complete)" in info.output and "cat 6, dog 6" in info.output
    assert "skipped dog/empty.jpg: empty file" in info.output
    data = json.loads(invoke("info", out, "--json").output)
    assert data["rows"] == 12 and data["feature_shape"] == [12, 32] and data["dtype"] == "float16"
    assert data["fingerprint"]["backbone"] == "tiny" and data["complete"] is True
    assert data["skipped"] == [{"path": "dog/empty.jpg", "reason": "empty file"}]
    (image_folder / "cat" / "cat.1.jpg").unlink()
    assert json.loads(invoke("info", out, "--json").output)["vanished"] == ["cat/cat.1.jpg"]


@pytest.mark.parametrize(
    "setup, extra, fragments",
    [
        ("missing", [], ["does not exist"]),
        ("flat", [], ["no sub-folders"]),
        ("one-class", [], ["at least two classes"]),
        ("ok", ["--backbone", "alexnet"], ["Expected a backbone among vgg16, mobilenet, resnet50,"]),
        ("ok", ["--layer", "fc9"], ["Expected a layer of vgg16"]),
        ("ok", ["--weights", "nope.h5"], ["no such file"]),
        ("ok", ["--batch-size", "0"], ["--batch-size to be a whole number"]),
        ("ok", ["--batch-size", "big"], ["Received: big"]),
    ],
)
def test_extract_bad_input(tmp_path, setup, extra, fragments):
    src = tmp_path / "src"
    if setup == "flat":
        src.mkdir()
        (src / "a.jpg").write_bytes(b"x")
    elif setup == "one-class":
        (src / "only").mkdir(parents=True)
        (src / "only" / "a.jpg").write_bytes(b"x")
    elif setup == "ok":
        for c in "ab":
            (src / c).mkdir(parents=True)
            (src / c / "1.jpg").write_bytes(b"x")
    options = TINY if setup != "ok" else ["-q"]
    result = invoke("extract", src, "--out", tmp_path / "c.h5", *options, *extra)
    assert_clean_error(result, *fragments)
    assert not (tmp_path / "c.h5").exists()


def test_mismatch_refused_then_overwrite(image_folder, tmp_path):
    out = tmp_path / "c.h5"
    assert invoke("extract", image_folder, "--out", out, *TINY).exit_code == 0
    result = invoke("extract", image_folder, "--out", out, *TINY, "--resize", "crop")
    assert_clean_error(result, "resize: 'squash' (cache) vs 'crop' (now)", "--overwrite")
    assert invoke("extract", image_folder, "--out", out, *TINY, "--resize", "crop", "--overwrite").exit_code == 0


def test_offline_imagenet_is_one_message(image_folder, tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise Exception(
            "URL fetch failure on https://storage.googleapis.com/x.h5: None -- [Errno -2] Name or service not known"
        )

    monkeypatch.setattr("keras.src.applications.vgg16.file_utils.get_file", offline)
    result = invoke("extract", image_folder, "--out", tmp_path / "c.h5", "--layer", "block5_pool", "-q")
    assert_clean_error(
        result,
        "Could not download the ImageNet weights of vgg16",
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "--weights PATH",
    )


def test_info_on_a_non_cache(tmp_path):
    (tmp_path / "x.h5").write_text("hello")
    assert_clean_error(invoke("info", tmp_path / "x.h5"), "Expected an HDF5 feature cache")
    assert_clean_error(invoke("info", tmp_path / "none.h5"), "no such file")


def test_download_unknown_dataset_and_offline_archive(tmp_path):
    assert_clean_error(invoke("download", "imagenet", "--out", tmp_path), "Expected a dataset name among: pets")
    result = invoke("download", "pets", "--out", tmp_path, "--archive", tmp_path / "missing.zip", "-q")
    assert_clean_error(result, "--archive")


def test_download_keeps_the_old_positional_folder_with_a_deprecation_note(tmp_path):
    result = invoke("download", "pets", tmp_path / "d", "--url", "not a url")
    assert "Deprecated" in result.stderr and "download pets --out" in " ".join(result.stderr.split())
    assert "Expected --url to be an http:// or https:// address" in result.stderr  # DEST was taken as the folder
    assert_clean_error(invoke("download", "pets", tmp_path / "a", "--out", tmp_path / "b"), "Expected the folder once")


def test_ctrl_c_keeps_the_work_and_says_how_to_resume(image_folder, tmp_path, monkeypatch):
    from headstart import open_cache
    from headstart.extractor.embed import Embedder

    real_call, calls = Embedder.__call__, []

    def interrupted(self, pixels):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_call(self, pixels)

    monkeypatch.setattr(Embedder, "__call__", interrupted)
    out = tmp_path / "c.h5"
    # Default commit interval (1 s): the two finished batches are only staged when Ctrl-C comes.
    result = invoke("extract", image_folder, "--out", out, *TINY[:-2])
    assert result.exit_code == 130
    assert "run the same command to resume" in " ".join(result.output.split())
    with open_cache(out) as cache:
        assert len(cache) == 8 and not cache.complete
    monkeypatch.setattr(Embedder, "__call__", real_call)
    result = invoke("extract", image_folder, "--out", out, *TINY)
    assert result.exit_code == 0 and "Extracted 4" in result.output and "8 already there" in result.output


def test_paths_with_brackets_are_printed_as_they_are(tmp_path):
    result = invoke("info", tmp_path / "[old]" / "c.h5")
    assert_clean_error(result, "[old]")


def test_prune_is_refused_while_another_writer_holds_the_cache(image_folder, tmp_path):
    from headstart.cache import CacheHeader, CacheWriter, open_cache

    out = tmp_path / "c.h5"
    assert invoke("extract", image_folder, "--out", out, *TINY).exit_code == 0
    with open_cache(out) as c:
        header = CacheHeader(
            dim=c.dim, dtype="float16", fingerprint=c.fingerprint, class_names=tuple(c.class_names), root=c.root
        )
    (image_folder / "cat" / "cat.0.jpg").unlink()
    with CacheWriter(out, header):  # another extraction is running
        result = invoke("extract", image_folder, "--out", out, *TINY, "--prune")
        assert_clean_error(result, "Another headstart process is writing")
    with open_cache(out) as c:
        assert len(c) == 12  # nothing was pruned behind the other writer's back


def test_unwritable_output_is_one_message(image_folder, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    result = invoke("extract", image_folder, "--out", tmp_path / "a-file" / "c.h5", *TINY)
    assert_clean_error(result, "Cannot write next to")


def test_extract_from_another_folder_needs_root_moved(image_folder, tmp_path):
    out = tmp_path / "c.h5"
    assert invoke("extract", image_folder, "--out", out, *TINY).exit_code == 0
    moved = tmp_path / "moved"
    image_folder.rename(moved)
    result = invoke("extract", moved, "--out", out, *TINY)
    assert_clean_error(result, str(image_folder.resolve()), str(moved.resolve()), "--root-moved")
    result = invoke("extract", moved, "--out", out, *TINY, "--root-moved")
    assert result.exit_code == 0, result.output
    assert "The cache's folder is now" in " ".join(result.output.split())
    assert json.loads(invoke("info", out, "--json").output)["root"] == str(moved.resolve())


def test_info_root_that_is_missing_says_so(image_folder, tmp_path):
    out = tmp_path / "c.h5"
    assert invoke("extract", image_folder, "--out", out, *TINY).exit_code == 0
    result = invoke("info", out, "--root", tmp_path / "gone")
    assert_clean_error(result, "Expected --root to be the folder of the pictures", "no such folder")
    assert len(result.output.strip().splitlines()) == 1


def test_extract_names_a_link_loop_it_did_not_follow(image_folder, tmp_path):
    (image_folder / "dog" / "again").symlink_to("..")
    result = invoke("extract", image_folder, "--out", tmp_path / "c.h5", *TINY)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "12 rows in" in text and "1 link to folders not followed (loops or repeats)" in text
    assert text.count("a symbolic link loop back to") == 1  # the warning, once


# -- polish: version, -v, help from the registries, numbers checked ------------------------------


def _text(output: str) -> str:
    """Help text without rich's box drawing, words joined by single spaces."""
    import re

    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


def test_version():
    import headstart

    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"headstart {headstart.__version__}"


def test_verbose_shows_the_library_info_logs(image_folder, tmp_path):
    quiet = invoke("extract", image_folder, "--out", tmp_path / "a.h5", *TINY)
    assert quiet.exit_code == 0 and "found 12 pictures" not in quiet.stderr
    loud = invoke("-v", "extract", image_folder, "--out", tmp_path / "b.h5", *TINY)
    assert loud.exit_code == 0, loud.output
    assert "found 12 pictures in 2 classes" in " ".join(loud.stderr.split())
    assert "extracted 12, skipped 0" in " ".join(loud.stderr.split())


def test_help_lists_the_choices_of_the_registries():
    from headstart.settings.backbones import BACKBONES
    from headstart.settings.config import PRECISIONS, RESIZE_METHODS, STORAGE_DTYPES

    text = _text(invoke("extract", "--help").stdout)
    assert f"one of: {', '.join(BACKBONES)}" in text
    for name, spec in BACKBONES.items():
        assert f"{name}: {spec.default_layer} (default)" in text
        assert all(layer in text for layer in spec.layers)
    assert f"One of: auto, {', '.join(PRECISIONS)}" in text
    assert f"One of: {', '.join(RESIZE_METHODS)}" in text and ", ".join(STORAGE_DTYPES) in text


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--input-size", "0", "Expected --input-size from 32 to 4096. Received: 0."),
        ("--input-size", "100000", "Expected --input-size from 32 to 4096. Received: 100000."),
        ("--commit-seconds", "-1", "Expected --commit-seconds of 0 or more. Received: -1.0."),
        ("--commit-seconds", "nan", "Expected --commit-seconds of 0 or more. Received: nan."),
        ("--workers", "0", "Expected --workers of at least 1. Received: 0."),
        ("--limit-per-class", "0", "Expected --limit-per-class of at least 1. Received: 0."),
        ("--batch-size", "0", "Expected --batch-size to be a whole number of at least 1, or auto. Received: 0."),
    ],
)
def test_numeric_options_are_checked_in_one_line(image_folder, tmp_path, option, value, message):
    """Issue 7: --input-size 0 silently meant the default; --commit-seconds -1 was taken."""
    result = invoke("extract", image_folder, "--out", tmp_path / "c.h5", *TINY, option, value)
    assert_clean_error(result, message)
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c.h5").exists()


def test_download_refuses_a_url_that_is_not_one(tmp_path):
    """Issue 7: download --url "not a url" was a traceback."""
    result = invoke("download", "pets", "--out", tmp_path / "data", "--url", "not a url")
    assert_clean_error(result, "Expected --url to be an http:// or https:// address. Received: 'not a url'.")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists()
