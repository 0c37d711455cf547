"""Fuzz test of run folders: every file of a good run broken in every way we could think of, every
command that reads a run run on each. Each must end with exit code 2 and one line naming what is
wrong: no traceback, no code run, nothing written.

Two families: damage (the manifest in run.json no longer matches, as after a disk or copy error)
and forgeries (the manifest re-sealed after the change, as a stranger would craft a folder), so
that the checks behind the manifest are reached too.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from heads_fixtures import features, write_cache
from typer.testing import CliRunner

from headstart.cli import app
from headstart.heads import training
from headstart.heads.rundir import RUN_JSON, manifest

runner = CliRunner()
PWNED = "headstart-fuzz-pwned"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A cache and two good runs on it (logreg and mlp: both array layouts)."""
    base = tmp_path_factory.mktemp("fuzz-runs")
    X, y = features(n=240, dim=16)
    cache = write_cache(base / "feats.h5", X, y)
    runs = {
        "logreg": training.train(cache, "logreg", base / "logreg", plots=False).run_dir,
        "mlp": training.train(cache, "mlp", base / "mlp", plots=False, params={"epochs": 2, "hidden_units": 8}).run_dir,
    }
    return cache, runs


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _json_edit(name, edit):
    def apply(folder: Path):
        data = json.loads((folder / name).read_text())
        edit(data)
        (folder / name).write_text(json.dumps(data))

    return apply


def _set(path: str, value):
    """Set a dotted key of a JSON object (``cache.fingerprint``) to ``value``."""
    keys = path.split(".")

    def edit(data):
        for k in keys[:-1]:
            data = data[k]
        data[keys[-1]] = value

    return edit


def _delete(path: str):
    keys = path.split(".")

    def edit(data):
        for k in keys[:-1]:
            data = data[k]
        del data[keys[-1]]

    return edit


def _write(name, content: bytes):
    def apply(folder):
        p = folder / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        p.write_bytes(content)

    return apply


def _truncate(name):
    def apply(folder):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])

    return apply


def _remove(name):
    return lambda folder: (folder / name).unlink()


def _dir_instead(name):
    def apply(folder):
        (folder / name).unlink()
        (folder / name).mkdir()

    return apply


def _symlink_loop(name):
    def apply(folder):
        (folder / name).unlink()
        (folder / name).symlink_to(folder / name)

    return apply


def _npz(name, **arrays):
    def apply(folder):
        np.savez(folder / name, **arrays)

    return apply


def _npz_edit(name, edit):
    def apply(folder):
        with np.load(folder / name) as z:
            arrays = {k: z[k] for k in z.files}
        edit(arrays)
        np.savez(folder / name, **arrays)

    return apply


def _npz_declaring(name, shape):
    """Every member of ``name`` replaced by an .npy header declaring ``shape`` over a few bytes: numpy
    would allocate the declared size before reading (a 4 PiB MemoryError)."""

    def apply(folder):
        import io
        import zipfile

        with np.load(folder / name) as z:
            members = list(z.files)
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
        with zipfile.ZipFile(folder / name, "w") as zf:
            for member in members:
                zf.writestr(f"{member}.npy", buf.getvalue() + bytes(64))

    return apply


def _pickle_in(name, marker):
    def apply(folder):
        (folder / name).write_bytes(pickle.dumps(_Payload(marker)))

    return apply


FILES = ("run.json", "head.json", "head.npz", "standardization.npz", "metrics.json", "history.csv")
WRONG_TYPES = (None, 0, -1, 1.5, "x", [], {}, True)
RUN_KEYS = (
    "kind",
    "format",
    "head",
    "class_names",
    "cache",
    "cache.path",
    "cache.fingerprint",
    "cache.fingerprint_digest",
    "cache.dim",
    "cache.root",
    "cache.weights_path",
    "split",
    "split.fractions",
    "split.seed",
    "versions",
    "files",
)
HEAD_KEYS = ("format", "head", "params", "classes", "n_features", "fitted", "history")


def damages(marker: Path):
    """(name, change) pairs that break a run folder; the manifest is left as it was."""
    out = []
    for f in FILES:
        out += [
            (f"{f}: missing", _remove(f)),
            (f"{f}: random bytes", _write(f, np.random.default_rng(len(f)).bytes(300))),
            (f"{f}: empty", _write(f, b"")),
            (f"{f}: truncated", _truncate(f)),
            (f"{f}: a folder", _dir_instead(f)),
            (f"{f}: a symlink loop", _symlink_loop(f)),
        ]
    out += [
        ("head.joblib of 0.1 (a pickle that runs code)", _pickle_in("head.joblib", marker)),
        ("head.keras of 0.1", _write("head.keras", b"PK\x03\x04")),
        ("run.json: not UTF-8", _write("run.json", b"\xff\xfe{\x00")),
        ("run.json: deeply nested", _write("run.json", b"[" * 100000 + b"]" * 100000)),
        ("run.json: a list", _write("run.json", b"[1, 2]")),
        ("run.json: NaN", _write("run.json", b'{"kind": NaN}')),
    ]
    return out


def forgeries(marker: Path):
    """(name, change) pairs of crafted folders: the manifest is re-sealed after the change."""
    out = []
    for key in RUN_KEYS:
        out.append((f"run.json: no {key}", _json_edit(RUN_JSON, _delete(key))))
        for v in WRONG_TYPES:
            out.append((f"run.json: {key} = {v!r}", _json_edit(RUN_JSON, _set(key, v))))
    for key in HEAD_KEYS:
        out.append((f"head.json: no {key}", _json_edit("head.json", _delete(key))))
        for v in WRONG_TYPES:
            out.append((f"head.json: {key} = {v!r}", _json_edit("head.json", _set(key, v))))
    out += [
        ("run.json: head os.system", _json_edit(RUN_JSON, _set("head", "os.system"))),
        ("run.json: other head than head.json", _json_edit(RUN_JSON, _set("head", "softmax"))),
        ("run.json: duplicate class names", _json_edit(RUN_JSON, _set("class_names", ["cat", "cat", "fox"]))),
        ("run.json: one class name", _json_edit(RUN_JSON, _set("class_names", ["cat"]))),
        ("run.json: fingerprint changed, digest not", _json_edit(RUN_JSON, _set("cache.fingerprint.layer", "fc1"))),
        ("run.json: split fractions off", _json_edit(RUN_JSON, _set("split.fractions", [0.9, 0.9, 0.9]))),
        ("run.json: split fractions not numbers", _json_edit(RUN_JSON, _set("split.fractions", ["a", "b", "c"]))),
        ("run.json: dim disagrees", _json_edit(RUN_JSON, _set("cache.dim", 17))),
        ("run.json: files lists a path outside", _json_edit(RUN_JSON, _set("files", {"../../etc/passwd": "sha256:0"}))),
        ("head.json: head os.system", _json_edit("head.json", _set("head", "os.system"))),
        ("head.json: format 1", _json_edit("head.json", _set("format", 1))),
        ("head.json: classes out of range", _json_edit("head.json", _set("classes", [0, 1, 7]))),
        ("head.json: classes unsorted", _json_edit("head.json", _set("classes", [2, 1, 0]))),
        ("head.json: n_features disagrees", _json_edit("head.json", _set("n_features", 17))),
        ("head.json: n_features huge", _json_edit("head.json", _set("n_features", 10**12))),
        ("head.json: epochs -1", _json_edit("head.json", _set("params.epochs", -1))),
        ("head.json: Cs empty", _json_edit("head.json", _set("params.Cs", []))),
        ("head.json: C is text", _json_edit("head.json", _set("params.C", "1"))),
        ("head.json: random_state text", _json_edit("head.json", _set("params.random_state", "os"))),
        ("head.json: class_weight odd", _json_edit("head.json", _set("params.class_weight", "uneven"))),
        ("head.json: fitted C_ text", _json_edit("head.json", _set("fitted", {"C_": "x"}))),
        ("head.npz: object array (pickle)", _npz("head.npz", coef=np.array([_Payload(marker)], dtype=object))),
        ("head.npz: other names", _npz("head.npz", w=np.zeros((3, 16)), b=np.zeros(3))),
        ("head.npz: no arrays", _npz("head.npz")),
        ("head.npz: declares a 4 PiB array", _npz_declaring("head.npz", (1 << 25, 1 << 25))),
        ("standardization.npz: declares a 4 PiB array", _npz_declaring("standardization.npz", (1 << 50,))),
        ("standardization.npz: zero scale", _npz("standardization.npz", mean=np.zeros(16), scale=np.zeros(16))),
        ("standardization.npz: NaN mean", _npz("standardization.npz", mean=np.full(16, np.nan), scale=np.ones(16))),
        ("standardization.npz: wrong shape", _npz("standardization.npz", mean=np.zeros(3), scale=np.ones(3))),
        ("standardization.npz: integers", _npz("standardization.npz", mean=np.zeros(16, int), scale=np.ones(16, int))),
        (
            "standardization.npz: object",
            _npz("standardization.npz", mean=np.array([_Payload(marker)], dtype=object), scale=np.ones(16)),
        ),
    ]
    return out


def _arrays_edits(run_name):
    """Shape, NaN and dtype damage of each array of the head (names differ by head)."""
    names = {
        "logreg": ("coef", "intercept"),
        "mlp": ("hidden.kernel", "hidden.bias", "predictions.kernel", "predictions.bias"),
    }[run_name]
    out = []
    for n in names:
        out += [
            (f"head.npz: {n} NaN", _npz_edit("head.npz", lambda a, n=n: a.__setitem__(n, np.full_like(a[n], np.nan)))),
            (f"head.npz: {n} inf", _npz_edit("head.npz", lambda a, n=n: a.__setitem__(n, np.full_like(a[n], np.inf)))),
            (f"head.npz: {n} one short", _npz_edit("head.npz", lambda a, n=n: a.__setitem__(n, a[n][..., :-1]))),
            (f"head.npz: {n} integers", _npz_edit("head.npz", lambda a, n=n: a.__setitem__(n, a[n].astype(int)))),
            (f"head.npz: {n} missing", _npz_edit("head.npz", lambda a, n=n: a.pop(n))),
        ]
    return out


BENIGN = {
    # Forgeries of values that no check can tell from real ones (other valid folders, seeds,
    # missing optional fields): each command must still end cleanly, by its result or one line.
    "run.json: versions = {}",
    "run.json: no versions",
    "run.json: split.seed = 0",
    "run.json: split.seed = -1",
    "run.json: cache.path = 'x'",  # only read when no cache is given
    "run.json: cache.root = 'x'",
    "run.json: cache.root = None",
    "run.json: no cache.root",
    "run.json: cache.weights_path = 'x'",
    "run.json: cache.weights_path = None",
    "run.json: no cache.weights_path",
    "head.json: params = {} (logreg)",  # every option at its default (the mlp's 256 units then
    "head.json: no fitted",  # disagree with its arrays: refused)
    "head.json: fitted = {}",
    "head.json: no history",
    "head.json: history = []",
    "head.json: epochs -1 (logreg)",  # options a head does not take are not read
    "head.json: C is text (mlp)",
    "head.json: Cs empty (mlp)",
}


def _reseal(folder: Path) -> None:
    path = folder / RUN_JSON
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(info, dict) and isinstance(info.get("files"), dict):
        info["files"] = {k: v for k, v in manifest(folder).items() if k != RUN_JSON}
        path.write_text(json.dumps(info))


def _no_crash(result) -> bool:
    """No exception escaped the command (a `SystemExit` is an ordinary exit) and no traceback was shown."""
    quiet = result.exception is None or isinstance(result.exception, SystemExit)
    return quiet and "Traceback" not in result.stderr + result.stdout


COMMANDS = {
    "evaluate": lambda run, cache, tmp: ["evaluate", str(run)],
    "evaluate with a cache": lambda run, cache, tmp: ["evaluate", str(run), str(cache)],
    "misclassified": lambda run, cache, tmp: ["misclassified", str(run), "--montage", str(tmp / "out" / "m.png")],
    "predict": lambda run, cache, tmp: ["predict", str(run), str(tmp / "pic.jpg")],
    "report": lambda run, cache, tmp: ["report", str(run), "--out", str(tmp / "out" / "r.html"), "--mistakes", "0"],
    "export": lambda run, cache, tmp: ["export", str(run), "--out", str(tmp / "out" / "m.keras")],
    "export a folder": lambda run, cache, tmp: ["export", str(run), "--out", str(tmp / "out" / "m"), "-f", "onnx"],
    "runs": lambda run, cache, tmp: ["runs", str(run.parent)],
}
"""Every command that reads a run folder; a command added later joins with one line."""
LISTS = {"runs"}
"""Commands that list many folders: a broken one is a note in the listing (exit 0), never a traceback."""
SLOW_ON_GOOD = {"export", "export a folder"}
"""Commands that build a whole model once a run passes its checks: tried only on runs that must fail."""


def _snapshot(root: Path) -> dict[str, bytes | None]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink() or p.is_dir():
            out[str(p)] = None
        else:
            out[str(p)] = p.read_bytes()
    return out


def _cases(kind):
    marker = Path("/tmp") / PWNED
    made = damages(marker) if kind == "damage" else forgeries(marker)
    return made


@pytest.mark.parametrize("kind", ["damage", "forgery"])
@pytest.mark.parametrize("run_name", ["logreg", "mlp"])
def test_every_command_refuses_every_broken_run_in_one_line(kind, run_name, good, tmp_path):
    cache, runs = good
    marker = Path("/tmp") / PWNED
    if marker.exists():
        marker.unlink()
    (tmp_path / "pic.jpg").write_bytes(b"not a picture")
    cases = _cases(kind) + (_arrays_edits(run_name) if kind == "forgery" else [])
    if kind == "forgery" and run_name == "mlp":  # run.json does not depend on the head: tried on logreg
        cases = [(name, change) for name, change in cases if not name.startswith("run.json")]
    tried = 0
    failures = []
    for name, change in cases:
        folder = tmp_path / "run"
        if folder.exists():
            shutil.rmtree(folder)
        shutil.copytree(runs[run_name], folder)
        try:
            change(folder)
        except (KeyError, TypeError):
            continue  # that key is not in this head's files (e.g. params.C of the mlp)
        if kind == "forgery" and "files" not in name:
            _reseal(folder)
        benign = name in BENIGN or f"{name} ({run_name})" in BENIGN
        before = _snapshot(tmp_path)
        for command, args in COMMANDS.items():
            if benign and command in SLOW_ON_GOOD:
                continue
            result = runner.invoke(app, args(folder, cache, tmp_path))
            tried += 1
            err = result.stderr.strip()
            clean_fail = (
                result.exit_code == 2
                and "Traceback" not in result.stderr + result.stdout
                and len(err.splitlines()) == 1
                and err.startswith("Error:")
            )
            if command in LISTS:
                ok = result.exit_code == 0 and _no_crash(result)
            elif benign:
                ok = clean_fail or (result.exit_code in (0, 1) and _no_crash(result))
            else:
                ok = (
                    result.exit_code == 2
                    and "Traceback" not in result.stderr + result.stdout
                    and len(err.splitlines()) == 1
                    and err.startswith("Error:")
                )
            if not ok:
                failures.append(
                    f"{name} / {command}: exit {result.exit_code}: {(err or result.stdout)[-300:]!r}"
                    f"{' ' + repr(result.exception) if result.exception and result.exit_code not in (0, 1, 2) else ''}"
                )
            if not benign and _snapshot(tmp_path) != before:
                failures.append(f"{name} / {command}: wrote or changed files")
        assert not marker.exists(), f"{name}: code ran"
    assert not failures, f"{len(failures)} of {tried} failed:\n" + "\n".join(failures)
    assert tried >= 100


# -- pictures that are not files, and an audit.json that points elsewhere (issue 21) ----------------


def test_predict_records_pipes_devices_and_folders_named_like_pictures(tmp_path, monkeypatch):
    """A pipe would block the open forever, a link to /dev/zero never ends: each is one error line,
    the real picture is still predicted, exit code 1. (The exported model is a stub: the files are
    what is fuzzed here.)"""
    import signal

    from PIL import Image

    from headstart.ship import predict as ship_predict

    class Model:
        def predict_on_batch(self, x):
            return np.tile([0.25, 0.75], (len(x), 1)).astype(np.float32)

    def hung(signum, frame):
        raise TimeoutError("predict hung on a picture that is not a file")

    monkeypatch.setattr(ship_predict, "load_exported", lambda path: (Model(), ["cat", "dog"]))
    (tmp_path / "m.keras").write_bytes(b"stub")
    Image.new("RGB", (20, 30), (9, 99, 199)).save(tmp_path / "real.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    (tmp_path / "dir.jpg").mkdir()
    names = ("real.jpg", "pipe.jpg", "zero.jpg", "loop.jpg")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    try:
        result = runner.invoke(app, ["predict", str(tmp_path / "m.keras"), *(str(tmp_path / n) for n in names)])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "real.jpg" in result.stdout and "dog" in result.stdout
    err = result.stderr
    assert "named pipe" in err and "device" in err and len(err.strip().splitlines()) == 4  # 3 pictures, 1 summary


def _red(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (255, 0, 0)).save(path)


def test_report_embeds_no_picture_an_audit_json_points_at(good, tmp_path):
    """Forged audit.json roots and paths (another folder, /, absolute, .., a link out): the report
    is written or refused in one line, and never embeds a picture from outside the cache's root."""
    cache, runs = good
    run = tmp_path / "run"
    shutil.copytree(runs["logreg"], run)
    secret = tmp_path / "secret" / "x.jpg"
    _red(secret)
    root = tmp_path / "root"  # the cache's own root is /data/pets (heads_fixtures): nothing there
    (root / "c").mkdir(parents=True)
    (root / "c" / "link.jpg").symlink_to(secret)
    forged = [
        (str(secret.parent), "x.jpg"),
        ("/", str(secret).lstrip("/")),
        (str(root), str(secret)),
        (str(root), "../secret/x.jpg"),
        (str(root), "c/link.jpg"),
        (str(root), "c/../../secret/x.jpg"),
        ("/data/pets", "../../" + str(secret).lstrip("/")),
        ("/data/pets/../../" + str(secret.parent).lstrip("/"), "x.jpg"),
        (None, "x.jpg"),
        (7, "x.jpg"),
        (str(secret.parent) + "\0", "x.jpg"),
    ]
    for claimed, path in forged:
        issue = {"path": path, "label": "cat", "suggested": "dog", "score": 0.9}
        audit = {"root": claimed, "cache": str(cache), "label_issues": [issue], "duplicates": [], "outliers": []}
        (tmp_path / "audit.json").write_text(json.dumps(audit))
        out = tmp_path / "r.html"
        out.unlink(missing_ok=True)
        result = runner.invoke(
            app, ["report", str(run), "--audit", str(tmp_path / "audit.json"), "--out", str(out), "--mistakes", "0"]
        )
        assert "Traceback" not in result.output, (claimed, path, result.output)
        assert result.exit_code in (0, 2), (claimed, path, result.output)
        if result.exit_code == 0:
            assert "data:image/jpeg" not in out.read_text(), (claimed, path)


def test_report_refuses_an_audit_json_that_is_a_pipe_or_a_device(good, tmp_path):
    import signal

    cache, runs = good

    def hung(signum, frame):
        raise TimeoutError("report hung reading audit.json")

    os.mkfifo(tmp_path / "pipe.json")
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        for name in ("pipe.json", "zero.json"):
            out = tmp_path / "r.html"
            args = [
                "report",
                str(runs["logreg"]),
                "--audit",
                str(tmp_path / name),
                "--out",
                str(out),
                "--mistakes",
                "0",
            ]
            result = runner.invoke(app, args)
            assert result.exit_code == 2 and "not a regular file" in result.stderr, result.output
            assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
