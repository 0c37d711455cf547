"""A run folder read back: run.json validated field by field, files checked, the head loaded (`load_run`).

`read_run` checks run.json (types, registry names, the fingerprint's digest), that every listed
file is there with its recorded SHA-256, and loads the head through
`headstart.heads.registry.load_head`, which checks the arrays. A folder from headstart 0.1
(pickled heads) is refused with a message to train again. Writing is `headstart.heads.rundir`.
"""

from __future__ import annotations

import logging
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from headstart.cache.fingerprint import fingerprint_digest
from headstart.errors import RunError, SplitError
from headstart.heads.registry import HEAD_FILES, HEADS, _is_int, _need, _read_json, head_name, load_head
from headstart.heads.rundir import METRICS_JSON, RUN_FORMAT, RUN_JSON, RUN_KIND, _versions, file_sha256
from headstart.heads.split import SplitSpec

log = logging.getLogger(__name__)


def _major(version: str) -> str:
    return str(version).split(".")[0]


def warn_versions(info: Mapping[str, Any], run_dir: Path) -> list[str]:
    """Log (and return) a warning per library whose major version differs from the run's."""
    now = _versions()
    out = []
    for name in ("keras", "scikit-learn"):
        then = info.get("versions", {}).get(name)
        if then and name in now and _major(then) != _major(now[name]):
            out.append(f"{run_dir} was made with {name} {then}; this is {name} {now[name]}")
            log.warning("%s: results may differ", out[-1])
    return out


def _is_str_map(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())


def validate_run_json(info: Any, path: Path) -> dict[str, Any]:
    """Check run.json field by field; returns it (with ``split`` parsed into ``split_spec``)."""
    _need(isinstance(info, dict), path, "a JSON object", type(info).__name__)
    if info.get("kind") != RUN_KIND or info.get("format") != RUN_FORMAT:
        if info.get("format") == 1:
            raise RunError(
                f"{path.parent} was made by headstart 0.1, whose saved heads can run code when loaded; "
                "it is no longer read. Train the head again from its cache (seconds): headstart train CACHE."
            )
        _need(False, path, f"kind {RUN_KIND!r} and format {RUN_FORMAT}", (info.get("kind"), info.get("format")))
    _need(
        isinstance(info.get("head"), str) and info["head"] in HEADS,
        path,
        f"head among {', '.join(HEADS)}",
        info.get("head"),
    )
    names = info.get("class_names")
    _need(
        isinstance(names, list)
        and len(names) >= 2
        and all(isinstance(c, str) and c for c in names)
        and len(set(names)) == len(names),
        path,
        "class_names as two or more distinct names",
        names,
    )
    cache = info.get("cache")
    _need(isinstance(cache, dict), path, "cache as an object", cache)
    _need(isinstance(cache.get("path"), str) and cache["path"], path, "cache.path as text", cache.get("path"))
    fp = cache.get("fingerprint")
    _need(isinstance(fp, dict) and fp, path, "cache.fingerprint as an object", fp)
    _need(
        cache.get("fingerprint_digest") == fingerprint_digest(fp),
        path,
        "cache.fingerprint_digest matching cache.fingerprint",
        cache.get("fingerprint_digest"),
    )
    for key in ("root", "weights_path"):
        _need(cache.get(key) is None or isinstance(cache.get(key), str), path, f"cache.{key} as text", cache.get(key))
    _need(_is_int(cache.get("dim")) and cache["dim"] > 0, path, "cache.dim a positive integer", cache.get("dim"))
    split = info.get("split")
    _need(isinstance(split, dict), path, "split as an object", split)
    try:
        fractions, seed = split["fractions"], split["seed"]
        _need(
            isinstance(fractions, list)
            and all(isinstance(f, numbers.Real) and not isinstance(f, bool) for f in fractions),
            path,
            "split.fractions as numbers",
            fractions,
        )
        _need(_is_int(seed), path, "split.seed an integer", seed)
        info["split_spec"] = SplitSpec(tuple(fractions), seed)
    except KeyError as err:
        raise RunError(f"Expected split.{err.args[0]} in {path}. Received: none.") from None
    except SplitError as err:
        raise RunError(f"Expected a valid split in {path}. Received: {err}") from None
    cal = info.get("calibration")
    if cal is not None:  # the rows the temperature was fitted on (`prepare`: carved, or cross-fitting folds)
        carved = isinstance(cal, dict) and isinstance(cal.get("fraction_of_train"), numbers.Real)
        _need(
            isinstance(cal, dict)
            and (
                (carved and 0 < cal["fraction_of_train"] < 1)
                or (not carved and _is_int(cal.get("folds")) and cal["folds"] >= 2)
            )
            and _is_int(cal.get("rows"))
            and cal["rows"] > 0,
            path,
            "calibration with fraction_of_train between 0 and 1 or two folds or more, and a positive count of rows",
            cal,
        )
    _need(_is_str_map(info.get("versions", {})), path, "versions as text", info.get("versions"))
    files = info.get("files")
    _need(_is_str_map(files), path, "files as a map of names to SHA-256", files)
    missing = [name for name in (*HEAD_FILES, METRICS_JSON) if name not in files]
    _need(not missing, path, f"files listing {', '.join(missing)}", sorted(files))
    return info


def read_run(run_dir: str | os.PathLike) -> tuple[dict[str, Any], Any]:
    """``(run.json checked, the fitted head checked)`` of a run folder, or one `RunError`."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_JSON
    if not run_dir.is_dir():
        raise RunError(
            f"Expected a run folder made by `headstart train`. Received: {run_dir} "
            f"({'no such folder' if not run_dir.exists() else 'not a folder'})."
        )
    if not path.is_file():
        raise RunError(f"Expected a run folder made by `headstart train`. Received: {run_dir} (no {RUN_JSON} in it).")
    info = validate_run_json(_read_json(path), path)
    for name, digest in info["files"].items():
        f = run_dir / name
        if "/" in name or name.startswith(".") or not f.is_file():
            raise RunError(f"Expected {name} in {run_dir}, as {RUN_JSON} lists. Received: no such file.")
        if file_sha256(f) != digest:
            raise RunError(
                f"Expected {f} as headstart wrote it. Received: a file that changed since "
                "(its SHA-256 differs from run.json's); train again, or restore the file."
            )
    head = load_head(run_dir)
    if head_name(head) != info["head"]:
        raise RunError(f"{run_dir}: run.json says {info['head']}, the saved head is {head_name(head)}.")
    if head.n_features_in_ != info["cache"]["dim"]:
        raise RunError(
            f"{run_dir}: the head takes {head.n_features_in_} features, run.json's cache has {info['cache']['dim']}."
        )
    if head.classes_.dtype.kind != "i" or int(max(head.classes_)) >= len(info["class_names"]):
        raise RunError(
            f"{run_dir}: the head predicts labels {head.classes_.tolist()[:5]}, run.json names "
            f"{len(info['class_names'])} classes."
        )
    return info, head


def load_run(run_dir: str | os.PathLike) -> tuple[dict[str, Any], Any]:
    """``(run.json, the fitted head)`` of a run folder, both checked; warns on other library versions."""
    info, head = read_run(run_dir)
    warn_versions(info, Path(run_dir))
    return info, head
