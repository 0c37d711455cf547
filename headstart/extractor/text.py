"""The text tower of a CLIP or SigLIP preset: prompts to the embeddings its cached image embeddings are compared with.

A cache of a ``hub:`` CLIP or SigLIP preset holds the image tower's projected embedding
(`headstart.settings.hub.TEXT_LAYER`, what KerasHub's ``get_vision_embeddings`` returns). The same
preset's text tower (``get_text_embeddings``), fed by the preset's own preprocessor (tokenizer,
lower-casing or SigLIP's canonicalisation, start / end tokens, padding to the text encoder's
``max_sequence_length``; built from the tokenizer alone where the folder has no ``preprocessor.json``),
gives the vectors they are compared with by cosine. The preset comes from where the cache's
came from: the preset folder the cache was extracted from (its digest checked by the caller), or
KerasHub's download of the fingerprint's Kaggle handle. Nothing here reads pictures.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headstart.errors import BackboneError, TextTowerError, WeightsDownloadError, first_line
from headstart.extractor.model import preset_folder
from headstart.settings.config import RANDOM_WEIGHTS, ExtractionConfig

log = logging.getLogger(__name__)

BATCH = 64


@dataclass(frozen=True)
class TextTower:
    """A loaded text tower: ``embed(prompts)`` and the preset's learned logit scale (and SigLIP's bias)."""

    family: str  # "clip" or "siglip"
    logit_scale: float  # exp of the preset's learned log scale: logits = scale * cosine (+ bias)
    logit_bias: float  # SigLIP's learned bias; 0.0 for CLIP
    encode: Callable[[list[str]], np.ndarray]

    def embed(self, prompts: Sequence[str]) -> np.ndarray:
        """``(len(prompts), D)`` float32 text embeddings, not normalised (as ``get_text_embeddings``)."""
        prompts = [str(p) for p in prompts]
        parts = [self.encode(prompts[i : i + BATCH]) for i in range(0, len(prompts), BATCH)]
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 0), np.float32)


def check_text_cache(config: ExtractionConfig, where: str):
    """The hub family of a cache whose rows a text tower can be compared with, or one `TextTowerError`
    naming ``where`` (the cache) and what it was extracted with."""
    from headstart.settings.hub import text_family

    family = text_family(config.backbone, config.layer, config.preprocessing)
    if family is None:
        raise TextTowerError(
            f"Expected a cache extracted with a CLIP or SigLIP preset (--backbone hub:clip_vit_base_patch32, "
            f"hub:siglip_base_patch16_224, ...), whose rows are the image embedding a text tower is compared with. "
            f"Received: {where}, extracted with {config.backbone} {config.layer} (no text tower)."
        )
    return family


def _offline_error(handle: str, family, err: Exception) -> WeightsDownloadError:
    first = first_line(err, 100)
    return WeightsDownloadError(
        f"Could not download the text tower of the KerasHub preset {handle}: {first}. Where there is network, run "
        f"keras_hub.models.{family.class_name}.from_preset('{handle}').save_to_preset('FOLDER') and "
        f"keras_hub.models.{family.tokenizer}.from_preset('{handle}').save_to_preset('FOLDER'), copy "
        "FOLDER here and extract with --weights FOLDER."
    )


def load_text_tower(config: ExtractionConfig) -> TextTower:
    """The text tower and preprocessor of the preset a cache was extracted with (``config``: its
    settings, ``weights_path`` the preset folder already checked against the fingerprint)."""
    import keras

    from headstart.settings import hub

    check_text_cache(config, config.backbone)
    keras_hub = hub._keras_hub()
    _, family, handle = hub.preset_of(config.backbone)
    if family.text_preprocessor is None:  # a fingerprint whose preset and layer name different families
        raise TextTowerError(f"Expected a CLIP or SigLIP preset. Received: {config.backbone} (no text tower).")
    folder = preset_folder(config)
    if config.weights == RANDOM_WEIGHTS:
        keras.utils.set_random_seed(config.seed or 0)  # the random towers the cache was extracted with
    preset = folder if folder is not None else handle
    try:
        backbone = getattr(keras_hub.models, family.class_name).from_preset(
            preset, load_weights=config.weights != RANDOM_WEIGHTS
        )
        preprocessor_class = getattr(keras_hub.models, family.text_preprocessor)
        if folder is not None and not (Path(folder) / "preprocessor.json").is_file():  # the tokenizer alone
            tokenizer = getattr(keras_hub.models, family.tokenizer).from_preset(folder)
            preprocessor = preprocessor_class(tokenizer=tokenizer)
        else:
            preprocessor = preprocessor_class.from_preset(preset)
    except (BackboneError, WeightsDownloadError):
        raise
    except Exception as err:  # noqa: BLE001 - KerasHub and kagglehub raise many kinds
        if folder is None:
            raise _offline_error(handle, family, err) from None
        first = first_line(err, 160)
        raise TextTowerError(
            f"Expected the text tower and tokenizer of {family.class_name} in {folder} (model.weights.h5, "
            f"tokenizer.json, assets/tokenizer/). Received: {first}. Where there is network, add the tokenizer with "
            f"keras_hub.models.{family.tokenizer}.from_preset('{handle}').save_to_preset('{folder}') "
            "(the folder's digest, hence the cache, stays valid)."
        ) from None
    preprocessor.image_converter = None  # prompts only: the pictures' embeddings are in the cache
    length = int(backbone.text_encoder.max_sequence_length)  # what the tower was trained on (SigLIP pools the last)
    head = backbone.clip_head if family.name == "clip" else backbone.siglip_head
    scale = float(np.exp(keras.ops.convert_to_numpy(head.logit_scale)))
    bias = float(keras.ops.convert_to_numpy(head.logit_bias)) if family.name == "siglip" else 0.0

    def encode(prompts: list[str]) -> np.ndarray:
        x = preprocessor({"images": None, "prompts": np.asarray(prompts, dtype=object)}, sequence_length=length)
        return np.asarray(keras.ops.convert_to_numpy(backbone.get_text_embeddings(x["token_ids"])), np.float32)

    log.info("loaded the text tower of %s (logit scale %.4g, bias %.4g)", config.backbone, scale, bias)
    return TextTower(family=family.name, logit_scale=scale, logit_bias=bias, encode=encode)
