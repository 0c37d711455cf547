"""Fuzz test of feature caches: a good cache broken in every way we could think of, and every
command that reads a cache run on each. Each must end with exit code 2 and exactly one line on
stderr naming the file and what is wrong: no traceback, nothing written (no --out folder, the
cache file and the run folder unchanged).

Two tables, each joined with one line: `BROKEN` (how a cache is broken: every dataset and
attribute missing, of the wrong type or rank, out of range; fingerprints; files that are not
caches at all) and `COMMANDS` (every command that reads a cache). Cases built with h5py directly
on a copy of a tiny good cache (a few milliseconds each); the commands run in-process.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import TINY_FINGERPRINT, make_images
from typer.testing import CliRunner

from headstart.cache import CacheHeader, CacheWriter, canonical_json, fingerprint_digest
from headstart.cache.fingerprint import FINGERPRINT_TYPES, OPTIONAL_FINGERPRINT_TYPES
from headstart.cache.validate import ATTRIBUTES, DATASETS
from headstart.cli import app

runner = CliRunner()
TINY = ["--backbone", "tiny", "--weights", "none", "--precision", "float32", "--batch-size", "4", "-q"]
CLASSES = ("cat", "dog")


# -- how a cache is broken ---------------------------------------------------------------------


@dataclass(frozen=True)
class Broken:
    """One way to break the cache at a path; ``expect``: words the error line must hold (what is
    wrong); ``commands``: only these commands (default all); ``xfail``: {command: reason}."""

    name: str
    apply: Callable[[Path], None]
    expect: str = ""
    commands: tuple[str, ...] | None = None
    xfail: dict[str, str] = field(default_factory=dict)


def _h5(fn):
    def apply(path: Path) -> None:
        with h5py.File(path, "r+", locking=False) as f:
            fn(f)

    return apply


def _stored_elsewhere(name):
    """``name`` rewritten with its bytes in ``secret.txt`` beside the cache (HDF5 external storage)."""

    def apply(path: Path) -> None:
        secret = path.parent / "secret.txt"
        secret.write_bytes(b"SECRET-" * 100_000)
        with h5py.File(path, "r+", locking=False) as f:
            shape, dtype = f[name].shape, f[name].dtype
            del f[name]
            size = int(np.prod(shape)) * dtype.itemsize
            f.create_dataset(name, shape=shape, dtype=dtype, external=[(str(secret), 0, size)])

    return apply


def _replace(name, data, dtype=None):
    def fn(f):
        del f[name]
        f.create_dataset(name, data=data, dtype=dtype)

    return _h5(fn)


def _group_instead(name):
    def fn(f):
        del f[name]
        f.create_group(name)

    return _h5(fn)


def _del(name):
    return _h5(lambda f: f.__delitem__(name))


def _attr(name, value):
    return _h5(lambda f: f.attrs.__setitem__(name, value))


def _del_attr(name):
    return _h5(lambda f: f.attrs.__delitem__(name))


def _set(name, index, value):
    return _h5(lambda f: f[name].__setitem__(index, value))


def _fingerprint(fp, digest=True):
    """Write ``fp`` (an object, or raw text) as the fingerprint; ``digest`` recomputes the digest
    (as a forger would), else the old digest stays."""

    def fn(f):
        f.attrs["fingerprint"] = fp if isinstance(fp, str) else canonical_json(fp)
        if digest and not isinstance(fp, str):
            f.attrs["fingerprint_digest"] = fingerprint_digest(fp)

    return _h5(fn)


def _file(content: bytes):
    def apply(path):
        path.unlink()
        path.write_bytes(content)

    return apply


def _truncate(fraction):
    def apply(path):
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])

    return apply


def _other_hdf5(path):
    path.unlink()
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)


def _dir_instead(path):
    path.unlink()
    path.mkdir()


def _symlink_loop(path):
    path.unlink()
    path.symlink_to(path)


def _missing(path):
    path.unlink()


STR = h5py.string_dtype()
COMMAND_NAMES = (
    "info",
    "extract",
    "train",
    "compare",
    "evaluate RUN CACHE",
    "evaluate RUN",
    "misclassified RUN",
    "sweep",
    "audit",
    "map",
    "merge",
    "curve",
    "similar",
    "merge --copy",
    "train --head zeroshot",
    "similar --text",
)  # the keys of COMMANDS, below
WRONG_DTYPE = {
    "features": np.zeros((24, 32), np.int32),
    "labels": np.zeros(24, np.float32),
    "paths": np.arange(24),
    "class_names": np.arange(2),
    "failed_paths": np.zeros(0, np.float64),
    "failed_reasons": np.zeros(0, np.float64),
    "progress": np.array([24.0, 0.0, 1.0]),
}
WRONG_RANK = {
    "features": np.zeros(24, np.float16),
    "labels": np.zeros((24, 2), np.int32),
    "paths": np.array([["a.jpg"] * 2] * 24, dtype=object),
    "class_names": np.array([["cat", "dog"]], dtype=object),
    "failed_paths": np.zeros((0, 2), dtype=object),
    "failed_reasons": np.zeros((0, 2), dtype=object),
    "progress": np.zeros((3, 1), np.int64),
}
WRONG_ATTR = {
    "schema_version": ("1", "expected an integer"),
    "fingerprint": (7, "expected a string"),
    "fingerprint_digest": (np.float64(1.5), "expected a string"),
    "root": (3, "expected a string"),
    "created": (np.array([1, 2]), "expected a string"),
    "versions": (5, "expected a string"),
}


def _broken() -> list[Broken]:
    out: list[Broken] = []
    for name in DATASETS:
        out += [
            Broken(f"/{name} missing", _del(name), f"no dataset /{name}"),
            Broken(f"/{name} a group", _group_instead(name), f"/{name} is a group"),
            Broken(f"/{name} of the wrong type", _replace(name, WRONG_DTYPE[name]), f"/{name} holds"),
            Broken(
                f"/{name} of the wrong rank",
                _replace(name, WRONG_RANK[name], STR if WRONG_RANK[name].dtype == object else None),
                f"/{name} has shape",
            ),
        ]
    for name in ATTRIBUTES:
        value, expect = WRONG_ATTR[name]
        out += [
            Broken(f"attribute {name} missing", _del_attr(name), f"no attribute {name}"),
            Broken(f"attribute {name} of the wrong type", _attr(name, value), expect),
        ]
    out += [
        Broken("attribute weights_path of the wrong type", _attr("weights_path", 3), "attribute weights_path"),
        Broken(
            "/features as an external link",
            _h5(
                lambda f: (f.__delitem__("features"), f.__setitem__("features", h5py.ExternalLink("/etc/passwd", "/x")))
            ),
            "/features is an external link to '/etc/passwd'",
        ),
        # HDF5's other ways to read another file (issue 21, finding 9): every command refuses them
        Broken(
            "/sha256 stored in another file", _stored_elsewhere("sha256"), "/sha256 keeps its bytes in another file"
        ),
        Broken(
            "/features stored in another file",
            _stored_elsewhere("features"),
            "/features keeps its bytes in another file",
        ),
        Broken(
            "/labels as a soft link",
            _h5(lambda f: (f.__delitem__("labels"), f.__setitem__("labels", h5py.SoftLink("/progress")))),
            "/labels is a soft link to '/progress'",
        ),
        # out of range
        Broken("progress past the rows", _set("progress", 0, 30), "/progress counts 30 rows but /features holds 24"),
        Broken("progress negative", _set("progress", 0, -1), "/progress counts -1 rows"),
        Broken("failed count past the list", _set("progress", 1, 5), "/progress counts 5 skipped pictures"),
        Broken("complete flag 2", _set("progress", 2, 2), "completeness 2"),
        Broken("progress of two values", _replace("progress", np.array([24, 0])), "/progress has shape (2,)"),
        Broken("a label past the classes", _set("labels", 3, 2), "/labels[3] is 2"),
        Broken("a negative label", _set("labels", 0, -1), "/labels[0] is -1"),
        Broken("a huge label", _set("labels", 7, 2**31 - 1), "/labels[7] is 2147483647"),
        Broken(
            "duplicate class names", _replace("class_names", np.array(["cat", "cat"], dtype=object), STR), "'cat' twice"
        ),
        Broken("no class names", _replace("class_names", np.array([], dtype=object), STR), "/class_names is empty"),
        Broken(
            "an empty class name",
            _replace("class_names", np.array(["cat", ""], dtype=object), STR),
            "/class_names holds ''",
        ),
        Broken(
            "a class name with a slash",
            _replace("class_names", np.array(["cat", "a/b"], dtype=object), STR),
            "/class_names holds 'a/b'",
        ),
        Broken("an absolute path", _set("paths", 2, "/etc/passwd"), "/paths[2] is '/etc/passwd'"),
        Broken("a path out of the root", _set("paths", 2, "../../etc/passwd"), "/paths[2] is '../../etc/passwd'"),
        Broken("an empty path", _set("paths", 2, ""), "/paths[2] is an empty path"),
        Broken(
            "paths not UTF-8",
            _replace("paths", np.array([b"\xff\xfe.jpg"] * 24, dtype=object), h5py.string_dtype("ascii")),
            "/paths holds bytes that are not UTF-8",
        ),
        Broken(
            "features of zero columns",
            _replace("features", np.zeros((24, 0), np.float16)),
            "at least one value per row",
        ),
        Broken("features float64", _replace("features", np.zeros((24, 32), np.float64)), "/features holds float64"),
        Broken(
            "features float32, fingerprint float16",
            _replace("features", np.zeros((24, 32), np.float32)),
            "the fingerprint says 'float16'",
        ),
        Broken("schema version 99", _attr("schema_version", 99), "schema version 99"),
        Broken("schema version 1.5", _attr("schema_version", 1.5), "attribute schema_version"),
        Broken("versions not JSON", _attr("versions", "{oops"), "attribute versions"),
        Broken("versions a list", _attr("versions", "[1]"), "attribute versions"),
        Broken("versions of numbers", _attr("versions", '{"keras": 3}'), "attribute versions"),
        Broken("root as bytes", _attr("root", np.bytes_(b"/data")), "attribute root"),
        # the fingerprint
        Broken("fingerprint not JSON", _fingerprint("{backbone: tiny"), "attribute fingerprint is not JSON"),
        Broken("fingerprint a list", _fingerprint("[1, 2]"), "not an object"),
        Broken("fingerprint a string", _fingerprint('"tiny"'), "not an object"),
        Broken("fingerprint null", _fingerprint("null"), "not an object"),
        Broken("fingerprint deeply nested", _fingerprint("[" * 100000 + "]" * 100000), "fingerprint"),
        Broken(
            "fingerprint with an unknown setting",
            _fingerprint({**TINY_FINGERPRINT, "colour": "red"}),
            "unknown settings: colour",
        ),
        Broken(
            "digest of other settings",
            _fingerprint({**TINY_FINGERPRINT, "layer": "pool"}, digest=False),
            "does not match the fingerprint",
        ),
        Broken("digest of the wrong form", _attr("fingerprint_digest", "abc"), "does not match the fingerprint"),
        Broken(
            "preprocessing os.system, digest kept",
            _fingerprint({**TINY_FINGERPRINT, "preprocessing": "os.system"}, digest=False),
            "does not match the fingerprint",
        ),
        Broken(
            "preprocessing os.system, digest recomputed",
            _fingerprint({**TINY_FINGERPRINT, "preprocessing": "os.system"}),
            "preprocessing",
        ),
        Broken(
            "backbone unknown, digest recomputed",
            _fingerprint({**TINY_FINGERPRINT, "backbone": "resnet9000"}),
            "backbone",
        ),
        # not a cache at all
        Broken(
            "no such file",
            _missing,
            "no such file",  # extract makes a new cache there
            commands=tuple(c for c in COMMAND_NAMES if c != "extract"),
        ),
        Broken("an empty file", _file(b""), ""),
        Broken("random bytes", _file(np.random.default_rng(0).bytes(4096)), ""),
        Broken("a text file", _file(b"features,labels\n1,2\n"), ""),
        Broken("an HDF5 file of something else", _other_hdf5, "no dataset"),
        Broken("truncated to half", _truncate(0.5), ""),
        Broken("truncated to 1 KiB", lambda p: p.write_bytes(p.read_bytes()[:1024]), ""),
        Broken("a folder", _dir_instead, "a folder"),
        Broken("a symbolic link loop", _symlink_loop, ""),
    ]
    for key, types in FINGERPRINT_TYPES.items():
        wrong = 1 if str in types or bool in types else "1"  # a number for text, text for numbers
        out += [
            Broken(
                f"fingerprint without {key}",
                _fingerprint({k: v for k, v in TINY_FINGERPRINT.items() if k != key}),
                f"lacks the settings {key}",
            ),
            Broken(
                f"fingerprint {key} of the wrong type",
                _fingerprint({**TINY_FINGERPRINT, key: wrong}),
                f"setting {key} is",
            ),
        ]
    for key in OPTIONAL_FINGERPRINT_TYPES:  # views, resampler, decoder: present only when not the old default
        out.append(
            Broken(
                f"fingerprint {key} of the wrong type", _fingerprint({**TINY_FINGERPRINT, key: 1}), f"setting {key} is"
            )
        )
    # NaN / inf in every row (so in every split): valid at the door (info and extract read no
    # features); the commands that read features must name the rows before any fit or score.
    for value in (np.nan, np.inf, -np.inf):
        out.append(
            Broken(
                f"features hold {value}",
                _set("features", (slice(None), 3), value),
                "Expected finite features",
                commands=("train", "compare", "evaluate RUN CACHE", "evaluate RUN", "misclassified RUN"),
            )
        )
    return out


BROKEN = _broken()
"""Every broken cache; a new way to break one joins with one line in `_broken`."""


# -- the commands that read a cache ----------------------------------------------------------------


@dataclass
class Env:
    cache: Path  # the broken cache (where the run's cache was: evaluate RUN reads it)
    run: Path  # a run trained on the good cache at that path
    images: Path  # pictures to extract
    out: Path  # where outputs would go: must not be created


COMMANDS: dict[str, Callable[[Env], list]] = {
    "info": lambda e: ["info", e.cache],
    "extract": lambda e: ["extract", e.images, "--out", e.cache, *TINY],
    "train": lambda e: ["train", e.cache, "--head", "logreg", "--out", e.out / "run"],
    "compare": lambda e: ["compare", e.cache, "--heads", "logreg", "--out", e.out / "cmp"],
    "evaluate RUN CACHE": lambda e: ["evaluate", e.run, e.cache],
    "evaluate RUN": lambda e: ["evaluate", e.run],
    "misclassified RUN": lambda e: ["misclassified", e.run, "--montage", e.out / "m.png"],
    "sweep": lambda e: ["sweep", e.cache, "--head", "logreg", "--grid", "C=0.1,1", "--out", e.out / "sweep"],
    "audit": lambda e: ["audit", e.cache, "--out", e.out / "audit"],
    "map": lambda e: ["map", e.cache, "--out", e.out / "map.png"],
    "merge": lambda e: ["merge", e.cache, "--out", e.out / "merged.h5"],
    "curve": lambda e: ["curve", e.cache, "--out", e.out / "curve", "--draws", "1"],
    "similar": lambda e: ["similar", e.cache, "cat/cat.0.jpg", "--montage", e.out / "near.png"],
    "merge --copy": lambda e: ["merge", e.cache, "--copy", "--out", e.out / "copied.h5"],
    "train --head zeroshot": lambda e: ["train", e.cache, "--head", "zeroshot", "--out", e.out / "zeroshot"],
    "similar --text": lambda e: ["similar", e.cache, "--text", "a cat", "--montage", e.out / "near.png"],
}
"""Every command that reads a cache; a command added later joins with one line (and in COMMAND_NAMES)."""
assert tuple(COMMANDS) == COMMAND_NAMES


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz-cache")
    rng = np.random.default_rng(0)
    y = np.arange(24) % 2
    X = (rng.normal(0, 1, (24, 32)) + 3 * y[:, None]).astype(np.float32)
    good = base / "good.h5"
    header = CacheHeader(
        dim=32, dtype="float16", fingerprint=TINY_FINGERPRINT, class_names=CLASSES, root=str(base / "images")
    )
    with CacheWriter(good, header) as w:
        w.append(X, y, [f"{CLASSES[k]}/{i}.jpg" for i, k in enumerate(y)])
        w.close(complete=True)
    cache = base / "cache.h5"
    shutil.copy(good, cache)
    run = base / "run"
    result = runner.invoke(app, ["train", str(cache), "--head", "logreg", "--out", str(run)])
    assert result.exit_code == 0, result.output
    images = make_images(base / "images", per_class=2)
    return good, Env(cache=cache, run=run, images=images, out=base / "out")


def _snapshot(root: Path) -> dict[str, bytes | str | None]:
    out: dict[str, bytes | str | None] = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p)] = "-> " + os.readlink(p)
        elif p.is_dir():
            out[str(p)] = None
        else:
            out[str(p)] = p.read_bytes()
    return out


def _restore(good: Path, cache: Path) -> None:
    if cache.is_symlink() or cache.is_file():
        cache.unlink()
    elif cache.is_dir():
        shutil.rmtree(cache)
    shutil.copy(good, cache)


def _params():
    for case in BROKEN:
        for command in COMMANDS:
            if case.commands is not None and command not in case.commands:
                continue
            marks = [pytest.mark.xfail(strict=True, reason=case.xfail[command])] if command in case.xfail else []
            yield pytest.param(case, command, id=f"{case.name} / {command}", marks=marks)


@pytest.mark.parametrize("case, command", list(_params()))
def test_every_command_refuses_every_broken_cache_in_one_line(case, command, env):
    good, e = env
    _restore(good, e.cache)
    if e.out.exists():  # left by a case marked xfail
        shutil.rmtree(e.out)
    case.apply(e.cache)
    before = _snapshot(e.cache.parent)
    result = runner.invoke(app, [str(a) for a in COMMANDS[command](e)])
    err = result.stderr.strip()
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.stdout[-300:]} {err[-300:]} {result.exception!r}"
    assert "Traceback" not in result.stdout + result.stderr
    assert len(err.splitlines()) == 1 and err.startswith("Error:"), err
    assert e.cache.name in err, err
    assert case.expect in err, err
    assert _snapshot(e.cache.parent) == before, "wrote or changed files"
    assert not e.out.exists()


def test_the_fuzz_covers_every_dataset_attribute_and_setting():
    names = " ".join(c.name for c in BROKEN)
    for name in DATASETS:
        for what in ("missing", "a group", "of the wrong type", "of the wrong rank"):
            assert f"/{name} {what}" in names
    for name in ATTRIBUTES:
        assert f"attribute {name} missing" in names and f"attribute {name} of the wrong type" in names
    for key in FINGERPRINT_TYPES:
        assert f"fingerprint without {key}" in names and f"fingerprint {key} of the wrong type" in names
    for key in OPTIONAL_FINGERPRINT_TYPES:
        assert f"fingerprint {key} of the wrong type" in names
    assert len(BROKEN) >= 100 and len(list(_params())) >= 750
