"""Heads on cached features: the split, the heads, training, evaluation, metrics, plots and run folders.

One job a module: ``sources`` (rows and standardization), ``base`` (what every head shares),
``logreg``, ``keras_heads``, ``knn``, ``svm`` and ``zeroshot`` (the heads), ``calibration`` (temperature
scaling), ``registry`` (heads by name; a head on disk),
``rundir`` (the run folder: written locked and atomically, read back validated), ``training``
(``train``, ``compare``), ``evaluation`` (``evaluate``, ``misclassified``), ``split``, ``metrics``,
``plots``, ``sweep`` (searches of a head's options), ``catalog`` (every run below a folder).
Predicting new pictures needs the extractor and lives in `headstart.ship.predict`.

Importing this package loads scikit-learn and h5py, not TensorFlow, Keras or matplotlib; those
load when a Keras head is fitted or exported, or a plot is drawn. Names load on first use.
"""

import importlib

_WHERE = {
    "HeadError": "headstart.errors",
    "SplitError": "headstart.errors",
    "EvaluateResult": "headstart.heads.evaluation",
    "MisclassifiedResult": "headstart.heads.evaluation",
    "Mistake": "headstart.heads.evaluation",
    "evaluate": "headstart.heads.evaluation",
    "load_run": "headstart.heads.run_reader",
    "misclassified": "headstart.heads.evaluation",
    "MLPHead": "headstart.heads.keras_heads",
    "SoftmaxHead": "headstart.heads.keras_heads",
    "LogRegHead": "headstart.heads.logreg",
    "HEADS": "headstart.heads.registry",
    "head_names": "headstart.heads.registry",
    "head_params": "headstart.heads.registry",
    "load_head": "headstart.heads.registry",
    "make_head": "headstart.heads.registry",
    "save_head": "headstart.heads.registry",
    "ArraySource": "headstart.heads.sources",
    "CacheSource": "headstart.heads.sources",
    "Standardizer": "headstart.heads.sources",
    "SplitSpec": "headstart.heads.split",
    "assign": "headstart.heads.split",
    "split_indices": "headstart.heads.split",
    "CompareResult": "headstart.heads.training",
    "TrainResult": "headstart.heads.training",
    "compare": "headstart.heads.training",
    "train": "headstart.heads.training",
    "KNNHead": "headstart.heads.knn",
    "SVMHead": "headstart.heads.svm",
    "ZeroShotHead": "headstart.heads.zeroshot",
    "ClassTexts": "headstart.heads.zeroshot",
    "calibrate": "headstart.heads.calibration",
    "SweepResult": "headstart.heads.sweep",
    "sweep": "headstart.heads.sweep",
    "find_runs": "headstart.heads.catalog",
}


def __getattr__(name: str):
    """Load the module of a public name on first use (``headstart.heads.names`` stays cheap)."""
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'headstart.heads' has no attribute {name!r}")


__all__ = [
    "HEADS",
    "ArraySource",
    "CacheSource",
    "CompareResult",
    "EvaluateResult",
    "HeadError",
    "LogRegHead",
    "MLPHead",
    "MisclassifiedResult",
    "Mistake",
    "SoftmaxHead",
    "SplitError",
    "SplitSpec",
    "Standardizer",
    "TrainResult",
    "assign",
    "compare",
    "evaluate",
    "head_names",
    "head_params",
    "load_head",
    "load_run",
    "make_head",
    "misclassified",
    "save_head",
    "split_indices",
    "train",
    "KNNHead",
    "SVMHead",
    "ZeroShotHead",
    "ClassTexts",
    "calibrate",
    "SweepResult",
    "sweep",
    "find_runs",
]
