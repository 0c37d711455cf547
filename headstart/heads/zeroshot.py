"""The zero-shot head: the class names' text embeddings (CLIP, SigLIP) as the weights, no training pictures.

For a cache of a CLIP or SigLIP preset (rows: the image tower's projected embedding), the score
of class ``c`` for a row ``x`` is the preset's own logit, ``scale * cos(x, t_c) + bias``: ``t_c``
the text tower's embedding of the class name in each prompt (``"a photo of a {}"``; several
prompts are averaged as Radford et al. 2021 do: unit embeddings averaged, then made unit again),
``scale`` the preset's learned logit scale (exp of ``logit_scale``; 100 for the released CLIP
models), ``bias`` SigLIP's learned bias (0 for CLIP).

Probabilities are the softmax of these logits over the classes, for both families. For CLIP that
is its own zero-shot classifier. SigLIP was trained with a sigmoid per (picture, text) pair:
``sigmoid(logit)`` answers "does this text fit this picture" for each class alone, and those do not
sum to 1. A classifier's columns must, so headstart takes the softmax of the same logits (the bias
then cancels): the ranking, hence the predicted class and the accuracy, is the sigmoid's; only the
probabilities differ, and a temperature (``--calibrate temperature``) can be fitted on them.

The head reads no picture: `fit_source` takes the class texts (`ClassTexts`, computed from the
preset by `headstart.zeroshot`, which needs the extractor) and the rows only for their width. Saved
arrays: ``text`` (classes, D) unit vectors, ``logit`` ``[scale, bias]``; standardization is the
identity (the cosine needs the raw embedding). ``to_keras`` is ``UnitNormalization`` then a
``Dense`` holding ``scale * text`` and the bias.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.utils.validation import validate_data

from headstart.errors import HeadError
from headstart.heads.base import DTYPES, Head, dense
from headstart.heads.sources import ArraySource, RowSource, Standardizer

DEFAULT_PROMPTS = ("a photo of a {}",)
PLACEHOLDER = "{}"
MAX_PROMPTS = 100
MAX_PROMPT_CHARS = 300


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); a zero row stays zero."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))


def class_text(name: str) -> str:
    """The words of a class folder's name: ``golden_retriever`` -> ``golden retriever``."""
    return " ".join(name.replace("_", " ").split())


def fill(prompt: str, name: str) -> str:
    """``prompt`` with the class text in place of ``{}`` (plain replacement: a prompt is never code)."""
    return prompt.replace(PLACEHOLDER, class_text(name))


@dataclass(frozen=True)
class ClassTexts:
    """What the text tower says about the classes: one embedding per class (in the cache's class
    order, prompts already averaged) and the preset's logit scale and bias."""

    embeddings: np.ndarray  # (n_classes, D), unit rows
    logit_scale: float
    logit_bias: float
    family: str  # "clip" or "siglip"
    prompts: tuple[str, ...]
    texts: list[list[str]] = field(default_factory=list)  # per class, the filled prompts
    preset: str = ""

    def to_dict(self) -> dict[str, Any]:
        """What run.json records of the text tower."""
        return {
            "family": self.family,
            "preset": self.preset,
            "prompts": list(self.prompts),
            "texts": self.texts,
            "logit_scale": self.logit_scale,
            "logit_bias": self.logit_bias,
            "probabilities": "softmax over the classes of scale * cosine + bias"
            + (" (SigLIP's per-class sigmoid ranks the classes the same)" if self.family == "siglip" else ""),
        }


def check_prompts(prompts: Any) -> tuple[str, ...]:
    """Prompts as a tuple of texts, each with one ``{}``; a ValueError saying what is wrong."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
        raise ValueError(f'Expected one prompt or more, like "a photo of a {{}}". Received: {prompts!r:.80}.')
    if len(prompts) > MAX_PROMPTS:
        raise ValueError(f"Expected at most {MAX_PROMPTS} prompts. Received: {len(prompts)}.")
    for p in prompts:
        if not isinstance(p, str) or p.count(PLACEHOLDER) != 1 or len(p) > MAX_PROMPT_CHARS:
            raise ValueError(
                f"Expected each prompt to hold {PLACEHOLDER} once, where the class name goes, in at most "
                f'{MAX_PROMPT_CHARS} characters ("a photo of a {{}}"). Received: {p!r:.80}.'
            )
    return tuple(prompts)


class ZeroShotHead(Head):
    """Cosine to the class names' text embeddings, at the preset's logit scale; fitted on no picture.

    ``prompts``: the templates the class name fills (averaged). ``random_state`` is accepted like
    every head's and unused: nothing here is random. Give the class texts with ``head.texts = ...``
    (a `ClassTexts`) before ``fit``; `headstart.zeroshot` does.
    """

    name = "zeroshot"
    needs_texts = True

    def __init__(self, *, prompts: Sequence[str] = DEFAULT_PROMPTS, random_state=0):
        self.prompts = prompts
        self.random_state = random_state

    def _check_params(self) -> None:
        check_prompts(self.prompts)

    def fit(self, X, y=None):
        """Take the class texts; ``X`` only says how many features the rows have."""
        X = validate_data(self, X, dtype=DTYPES)
        return self.fit_source(ArraySource(X, np.zeros(len(X), np.int64)))

    def fit_source(self, train: RowSource, validation: RowSource | None = None):
        self._check_params()
        texts = getattr(self, "texts", None)
        if not isinstance(texts, ClassTexts):
            raise HeadError(
                "Expected the class names' text embeddings for the zeroshot head (it learns from no picture). "
                "Received: none; train it with headstart train CACHE --head zeroshot (or headstart.zeroshot.train), "
                "which computes them with the cache's CLIP or SigLIP preset."
            )
        n_classes, dim = texts.embeddings.shape
        if train.n_features != dim:
            raise HeadError(
                f"Expected rows of {dim} values, the text tower's embedding size. Received: {train.n_features}."
            )
        if n_classes < 2:
            raise HeadError(f"Expected two classes or more for the zeroshot head. Received: {n_classes}.")
        self.classes_ = np.arange(n_classes)
        self.n_features_in_ = dim
        self.scaler_ = Standardizer.identity(dim)
        self.arrays_ = {
            "text": unit_rows(texts.embeddings),
            "logit": np.array([texts.logit_scale, texts.logit_bias], np.float32),
        }
        self.history_ = []
        return self

    def array_shapes(self, n_features: int, n_classes: int) -> dict[str, tuple[int, ...]]:
        return {"text": (n_classes, n_features), "logit": (2,)}

    def check_arrays(self, arrays) -> str | None:
        norms = np.linalg.norm(arrays["text"].astype(np.float64), axis=1)
        if not np.all(np.abs(norms - 1.0) < 1e-3):
            return "text embeddings that are not unit vectors"
        if not 0 < float(arrays["logit"][0]) <= 1e4:
            return f"a logit scale of {float(arrays['logit'][0]):g} (expected above 0, at most 10,000)"
        return None

    def _logits_rows(self, X: np.ndarray) -> np.ndarray:
        a = self.arrays_
        scale, bias = (float(v) for v in a["logit"])
        return (unit_rows(X) @ a["text"].T) * np.float32(scale) + np.float32(bias)

    def _keras_logits(self, keras, x):
        a = self.arrays_
        scale, bias = (float(v) for v in a["logit"])
        x = keras.layers.UnitNormalization(axis=-1, name="unit_length")(x)
        kernel = (a["text"].T * np.float32(scale)).astype(np.float32)
        return dense(keras, "text_logits", kernel, np.full(len(a["text"]), bias, np.float32))(x)
