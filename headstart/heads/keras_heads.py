"""The Keras heads, softmax and MLP: trained with Adam and early stopping, kept as weight arrays.

Keras is imported inside ``fit`` and ``to_keras``, never at import time. Once fitted, a head is
its layers' weights (``arrays_``) and predicts with NumPy, so a saved head needs no Keras model
file (nothing in it can run code) and evaluation never starts TensorFlow.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d, validate_data

from headstart.heads.base import (
    DTYPES,
    Head,
    check_class_weight,
    check_fraction,
    check_positive,
    check_two_classes,
    class_weights,
    dense,
    encode,
    fit_scaler,
    holdout,
    log_loss,
    seed_of,
)
from headstart.heads.sources import ArraySource, RowSource, iter_blocks

log = logging.getLogger(__name__)

_HISTORY_KEYS = {"loss", "accuracy", "val_loss", "val_accuracy"}
_BATCHES_CLASS = None


def _batches_class():
    """`keras.utils.PyDataset` over a `RowSource`, defined on first use so Keras loads lazily."""
    global _BATCHES_CLASS
    if _BATCHES_CLASS is not None:
        return _BATCHES_CLASS
    import keras

    class Batches(keras.utils.PyDataset):
        """Standardized batches of a `RowSource`; shuffled a window of blocks at a time."""

        def __init__(self, source, y_idx, scaler, batch_size, shuffle, seed):
            super().__init__(workers=1, use_multiprocessing=False)
            self.source, self.y_idx, self.scaler = source, y_idx, scaler
            self.batch_size, self.shuffle = batch_size, shuffle
            self.rng = np.random.default_rng(seed)
            self.order = self._plan()

        def _plan(self) -> np.ndarray:
            n = len(self.y_idx)
            if not self.shuffle:
                return np.arange(n)
            blocks, w = self.source.blocks, self.source.shuffle_window
            perm = self.rng.permutation(len(blocks))
            parts = []
            for i in range(0, len(perm), w):
                pos = np.concatenate([np.arange(*blocks[b]) for b in perm[i : i + w]])
                parts.append(self.rng.permutation(pos))
            return np.concatenate(parts) if parts else np.arange(0)

        def __len__(self) -> int:
            return -(-len(self.y_idx) // self.batch_size)

        def __getitem__(self, i):
            pos = self.order[i * self.batch_size : (i + 1) * self.batch_size]
            return self.scaler.transform(self.source.gather(pos), copy=False), self.y_idx[pos]

        def on_epoch_end(self) -> None:
            if self.shuffle:
                self.order = self._plan()

    class ValidationScore(keras.callbacks.Callback):
        """Adds ``val_loss`` and ``val_accuracy`` to each epoch's logs, for early stopping.

        Computed with direct model calls on standardized blocks: the same numbers as
        ``model.evaluate`` (loss clipped at 1e-7 as Keras does), at a fraction of its cost per epoch.
        """

        def __init__(self, source, y_idx, scaler, class_weights=None):
            super().__init__()
            self.source, self.y_idx, self.scaler = source, y_idx, scaler
            self.class_weights = class_weights

        def on_epoch_end(self, epoch, logs=None):
            p = np.concatenate(
                [
                    keras.ops.convert_to_numpy(self.model(self.scaler.transform(b), training=False))
                    for b in iter_blocks(self.source)
                ]
            )
            if logs is not None:
                logs["val_loss"] = log_loss(p, self.y_idx, self.class_weights, eps=1e-7)
                logs["val_accuracy"] = float(np.mean(p.argmax(axis=1) == self.y_idx))

    Batches.ValidationScore = ValidationScore
    _BATCHES_CLASS = Batches
    return Batches


def _auto_batch(n_train: int) -> int:
    """About 50 steps an epoch, between 16 and 256 rows a step: small datasets still take
    enough optimizer steps to converge, large ones keep steps few and cheap."""
    return int(min(256, max(16, n_train // 50)))


class KerasHead(Head):
    """Shared fitting of the Keras heads; subclasses name their dense layers and build the model."""

    dense_layers: tuple[str, ...] = ("predictions",)

    def _build(self, keras, n_features: int, n_classes: int, seed: int | None):  # pragma: no cover
        raise NotImplementedError

    def _check_params(self) -> None:
        check_positive("epochs", self.epochs, integer=True)
        if self.batch_size != "auto":
            check_positive("batch_size", self.batch_size, integer=True)
        check_positive("learning_rate", self.learning_rate)
        check_positive("patience", self.patience, integer=True, allow_zero=True)
        check_fraction("validation_fraction", self.validation_fraction)
        check_class_weight(self.class_weight)

    def _widths(self, n_features: int, n_classes: int) -> list[tuple[int, int]]:
        """(inputs, units) of each dense layer in ``dense_layers`` order."""
        return [(n_features, n_classes)]

    def array_shapes(self, n_features: int, n_classes: int) -> dict[str, tuple[int, ...]]:
        out = {}
        for name, (n_in, n_out) in zip(self.dense_layers, self._widths(n_features, n_classes)):
            out[f"{name}.kernel"] = (n_in, n_out)
            out[f"{name}.bias"] = (n_out,)
        return out

    def fit(self, X, y, validation_data=None):
        """Fit on ``X, y``; stop early on the loss of ``validation_data=(X_val, y_val)``."""
        self._check_params()
        X, y = validate_data(self, X, y, dtype=DTYPES)
        check_classification_targets(y)
        if validation_data is not None:
            Xv, yv = validation_data
            Xv = validate_data(self, Xv, reset=False, dtype=DTYPES)
            return self._fit(ArraySource(X, y), ArraySource(Xv, column_or_1d(yv)))
        split = holdout(y, self.validation_fraction, self.random_state)
        if split is None:
            return self._fit(ArraySource(X, y), None)
        return self._fit(ArraySource(X, y, rows=split[0]), ArraySource(X, y, rows=split[1]))

    def fit_source(self, train: RowSource, validation: RowSource | None = None):
        """Fit on rows read a block at a time (a cache larger than memory)."""
        self._check_params()
        self.n_features_in_ = int(train.n_features)
        check_classification_targets(train.labels)
        return self._fit(train, validation)

    def _fit(self, train: RowSource, validation: RowSource | None):
        self.classes_ = np.unique(train.labels)
        check_two_classes(self.classes_)
        y_idx = encode(train.labels, self.classes_, "training")

        import keras

        seed = seed_of(self.random_state)
        if seed is not None:
            keras.utils.set_random_seed(seed)
        self.scaler_ = fit_scaler(self.standardize, train)
        model = self._build(keras, train.n_features, len(self.classes_), seed)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=self.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        Batches = _batches_class()
        self.batch_size_ = _auto_batch(len(y_idx)) if self.batch_size == "auto" else self.batch_size
        data = Batches(train, y_idx, self.scaler_, self.batch_size_, True, seed)
        weights = class_weights(self.class_weight, self.classes_, y_idx)
        callbacks = []
        if validation is not None and len(validation.labels):
            val_idx = encode(validation.labels, self.classes_, "validation")
            callbacks = [
                Batches.ValidationScore(validation, val_idx, self.scaler_, weights),
                keras.callbacks.EarlyStopping(monitor="val_loss", patience=self.patience, restore_best_weights=True),
            ]
        hist = model.fit(
            data,
            epochs=self.epochs,
            shuffle=False,  # Batches shuffles rows itself, a window of blocks at a time; keep its order
            callbacks=callbacks,
            class_weight=None if weights is None else dict(enumerate(weights.tolist())),
            verbose=0,
        )
        h = hist.history
        n_epochs = len(h.get("loss", []))
        self.history_ = [
            {"epoch": e + 1, **{k: float(v[e]) for k, v in h.items() if k in _HISTORY_KEYS}} for e in range(n_epochs)
        ]
        self.best_epoch_ = int(np.argmin(h["val_loss"])) + 1 if "val_loss" in h else n_epochs
        self.n_iter_ = n_epochs
        self.arrays_ = {}
        for name in self.dense_layers:
            kernel, bias = model.get_layer(name).get_weights()
            self.arrays_[f"{name}.kernel"] = np.asarray(kernel, dtype=np.float32)
            self.arrays_[f"{name}.bias"] = np.asarray(bias, dtype=np.float32)
        log.info("%s head: %d epochs, best %d", self.name, n_epochs, self.best_epoch_)
        if callbacks and self.best_epoch_ == self.epochs:
            log.warning(
                "%s head: the validation loss was still falling at the last of %d epochs; "
                "raise --epochs or --learning-rate",
                self.name,
                self.epochs,
            )
        return self

    def _logits_rows(self, X: np.ndarray) -> np.ndarray:
        x = self.scaler_.transform(X)
        a = self.arrays_
        for name in self.dense_layers[:-1]:
            x = np.maximum(x @ a[f"{name}.kernel"] + a[f"{name}.bias"], 0.0)
        last = self.dense_layers[-1]
        return x @ a[f"{last}.kernel"] + a[f"{last}.bias"]

    def _keras_logits(self, keras, x):
        a = self.arrays_
        for name in self.dense_layers[:-1]:
            x = dense(keras, name, a[f"{name}.kernel"], a[f"{name}.bias"], activation="relu")(x)
        last = self.dense_layers[-1]
        return dense(keras, last, a[f"{last}.kernel"], a[f"{last}.bias"])(x)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags


class SoftmaxHead(KerasHead):
    """One ``Dense(num_classes, softmax)`` layer, trained with Adam, early stopping on validation loss.

    The new classification layer of the classic VGG16 transfer-learning recipe, on
    standardized features.
    """

    name = "softmax"

    def __init__(
        self,
        *,
        epochs: int = 100,
        batch_size: int | str = "auto",
        learning_rate: float = 1e-3,
        patience: int = 5,
        validation_fraction: float = 0.1,
        class_weight=None,
        standardize: bool = True,
        random_state=0,
    ):
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.class_weight = class_weight
        self.standardize = standardize
        self.random_state = random_state

    def _build(self, keras, n_features, n_classes, seed):
        inputs = keras.Input((n_features,), name="features")
        outputs = keras.layers.Dense(n_classes, activation="softmax", name="predictions")(inputs)
        return keras.Model(inputs, outputs, name="softmax_head")


class MLPHead(KerasHead):
    """A small MLP: one hidden ReLU layer (256 units), dropout 0.5, softmax; early stopping."""

    name = "mlp"
    dense_layers = ("hidden", "predictions")

    def __init__(
        self,
        *,
        hidden_units: int = 256,
        dropout: float = 0.5,
        epochs: int = 100,
        batch_size: int | str = "auto",
        learning_rate: float = 1e-3,
        patience: int = 5,
        validation_fraction: float = 0.1,
        class_weight=None,
        standardize: bool = True,
        random_state=0,
    ):
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.class_weight = class_weight
        self.standardize = standardize
        self.random_state = random_state

    def _check_params(self) -> None:
        super()._check_params()
        check_positive("hidden_units", self.hidden_units, integer=True)
        check_fraction("dropout", self.dropout)

    def _widths(self, n_features, n_classes):
        return [(n_features, self.hidden_units), (self.hidden_units, n_classes)]

    def _build(self, keras, n_features, n_classes, seed):
        inputs = keras.Input((n_features,), name="features")
        x = keras.layers.Dense(self.hidden_units, activation="relu", name="hidden")(inputs)
        x = keras.layers.Dropout(self.dropout, seed=seed, name="dropout")(x)
        outputs = keras.layers.Dense(n_classes, activation="softmax", name="predictions")(x)
        return keras.Model(inputs, outputs, name="mlp_head")
