"""Heads on cached features: the split, the estimators, metrics, plots and run directories.

Importing this package loads scikit-learn and h5py, not TensorFlow, Keras or matplotlib; those
load when a Keras head is fitted or loaded, or a plot is drawn.
"""

from headstart.heads.estimators import (
    HEADS,
    ArraySource,
    HeadError,
    LogRegHead,
    MLPHead,
    SoftmaxHead,
    Standardizer,
    head_names,
    head_params,
    load_head,
    make_head,
    save_head,
)
from headstart.heads.runs import (
    CompareResult,
    EvaluateResult,
    MisclassifiedResult,
    Prediction,
    PredictResult,
    TrainResult,
    compare,
    evaluate,
    load_run,
    misclassified,
    predict,
    train,
)
from headstart.heads.split import SplitError, SplitSpec, assign, split_indices

__all__ = [
    "HEADS",
    "ArraySource",
    "CompareResult",
    "EvaluateResult",
    "HeadError",
    "LogRegHead",
    "MLPHead",
    "MisclassifiedResult",
    "Prediction",
    "PredictResult",
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
    "predict",
    "save_head",
    "split_indices",
    "train",
]
