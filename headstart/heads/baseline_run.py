"""A `headstart baseline` run folder read back, checked, as one more row of a comparison table.

The baseline itself (a small CNN trained from pixels) is the workflow `headstart.baseline`; what
the heads need of it is only its row, read here so that the heads never import a workflow.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from headstart.errors import BaselineError, HeadstartError
from headstart.heads import rundir
from headstart.heads.registry import _read_json

BASELINE_HEAD = "scratch"
"""The ``head`` a baseline run folder records in run.json."""


def read_baseline(run_dir: str | os.PathLike, split=None, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The comparison row of a baseline run folder, checked: written by `train_baseline`, files
    unchanged, and (when given) on the same split and classes as the heads it joins."""
    run_dir = Path(run_dir)
    path = run_dir / rundir.RUN_JSON
    if not path.is_file():
        raise BaselineError(
            f"Expected a run folder made by `headstart baseline`. Received: {run_dir} "
            f"({'no ' + rundir.RUN_JSON + ' in it' if run_dir.is_dir() else 'no such folder'})."
        )
    info = _read_json(path)
    if not isinstance(info, dict) or info.get("kind") != rundir.RUN_KIND or info.get("head") != BASELINE_HEAD:
        got = info.get("head") if isinstance(info, dict) else type(info).__name__
        raise BaselineError(
            f"Expected a run folder made by `headstart baseline` (head {BASELINE_HEAD!r}). "
            f"Received: {run_dir} (head {got!r})."
        )
    if not rundir.is_run(run_dir):
        raise BaselineError(
            f"Expected {run_dir} as headstart wrote it. Received: files that changed since, or "
            "other files beside them; run the baseline again."
        )
    metrics = _read_json(run_dir / rundir.METRICS_JSON)
    try:
        spec = type(split).from_dict(info["split"]) if split is not None else None
        row = {
            "head": BASELINE_HEAD,
            "val_accuracy": metrics["val"].get("accuracy"),
            "test_accuracy": metrics["test"].get("accuracy"),
            "test_log_loss": metrics["test"].get("log_loss"),
            "fit_seconds": float(info["fit_seconds"]),
            "run_dir": str(run_dir),
        }
    except (KeyError, TypeError, ValueError, AttributeError, HeadstartError) as err:
        raise BaselineError(
            f"Expected run.json and metrics.json of a baseline in {run_dir}. Received: "
            f"files without a valid {err} field."
        ) from None
    for key in ("val_accuracy", "test_accuracy", "test_log_loss"):
        if row[key] is not None and not (isinstance(row[key], (int, float)) and math.isfinite(row[key])):
            raise BaselineError(f"Expected a number as {key} in {run_dir}/metrics.json. Received: {row[key]!r}.")
    if spec is not None and (spec.fractions, spec.seed) != (split.fractions, split.seed):
        raise BaselineError(
            f"Expected the baseline on the heads' split ({','.join(map(str, split.fractions))}, seed {split.seed}). "
            f"Received: {run_dir} on {','.join(map(str, spec.fractions))}, seed {spec.seed}; pass the same "
            "--split and --seed to both commands."
        )
    if class_names is not None and list(info.get("class_names", [])) != list(class_names):
        raise BaselineError(
            f"Expected the baseline on the classes {', '.join(class_names)}. Received: {run_dir} "
            f"on {', '.join(map(str, info.get('class_names', [])))}."
        )
    return row
