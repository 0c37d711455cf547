"""KerasHub backbones (``--backbone hub:PRESET``): a preset's image encoder cut at its image embedding.

Optional (``pip install -e '.[hub]' in the headstart clone``). Three families, each a registry entry:
DINOv2 (the class token of the last layer, layer-normalised), CLIP and SigLIP (the image
embedding of the image tower, as `get_vision_embeddings` computes it). ``PRESET`` must be a KerasHub
preset of one of them (listed offline from KerasHub's own table); ``--weights`` is ``imagenet``
(the preset's weights, downloaded by KerasHub), ``none`` (random, the preset's architecture) or a
local preset folder (the preset's files: ``config.json``, ``model.weights.h5``; e.g. saved with
``save_to_preset`` where there is network). The fingerprint records the preset's Kaggle handle with
its version (``kaggle://keras/dinov2/keras/dinov2_small/1``), or the SHA-256 of the folder's files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headstart.cache import h5safety
from headstart.errors import BackboneError, WeightsDownloadError, first_line

log = logging.getLogger(__name__)

PREFIX = "hub:"
HANDLE = re.compile(r"kaggle://[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+/keras/[A-Za-z0-9_.-]+/[0-9]+")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_FILES = ("config.json", "model.weights.h5", "model.weights.json", "image_converter.json")


@dataclass(frozen=True)
class Family:
    """One kind of KerasHub backbone: its class, the feature it gives, its preprocessing."""

    name: str
    class_name: str  # KerasHub class (and the registered name its config.json must hold)
    layer: str
    preprocessing: str  # a key of `headstart.settings.backbones.PREPROCESSING`
    text_preprocessor: str | None = None  # KerasHub class that tokenizes prompts; None: no text tower

    @property
    def tokenizer(self) -> str | None:
        """The KerasHub tokenizer class of the text tower (``CLIPTokenizer``), or None."""
        return self.text_preprocessor.replace("Preprocessor", "Tokenizer") if self.text_preprocessor else None


FAMILIES: dict[str, Family] = {
    "dinov2": Family("dinov2", "DINOV2Backbone", "class_token", "imagenet_mean_std"),
    "clip": Family("clip", "CLIPBackbone", "image_embedding", "clip_mean_std", "CLIPPreprocessor"),
    "siglip": Family("siglip", "SigLIPBackbone", "image_embedding", "scale_minus1_1", "SigLIPPreprocessor"),
}
TEXT_LAYER = "image_embedding"
"""The layer of a text-image family whose rows its text tower's embeddings are compared with: the
image tower's projected embedding (CLIP: ``vision_projection`` of the class token; SigLIP: the
vision encoder's pooled head), what KerasHub's ``get_vision_embeddings`` returns."""
LAYERS = tuple(sorted({f.layer for f in FAMILIES.values()}))
PREPROCESSINGS = tuple(f.preprocessing for f in FAMILIES.values())

# Published per-family normalisation (model cards), on pixels / 255: (mean, std).
NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet_mean_std": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip_mean_std": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "scale_minus1_1": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def is_hub(backbone: str) -> bool:
    return isinstance(backbone, str) and backbone.startswith(PREFIX)


def _keras_hub():
    try:
        import keras_hub
    except ImportError as err:
        raise BackboneError(
            f"Expected KerasHub for --backbone hub:PRESET (pip install -e '.[hub]' in the headstart clone). Received: {err}."
        ) from None
    return keras_hub


def presets() -> dict[str, tuple[Family, str]]:
    """Every KerasHub preset of a supported family: ``{name: (family, kaggle handle with version)}``."""
    keras_hub = _keras_hub()
    out: dict[str, tuple[Family, str]] = {}
    for family in FAMILIES.values():
        cls = getattr(keras_hub.models, family.class_name)
        for name, info in cls.presets.items():
            out[name] = (family, info["kaggle_handle"])
    return out


def preset_of(backbone: str) -> tuple[str, Family, str]:
    """``(preset name, family, kaggle handle)`` of ``hub:PRESET``, or a `BackboneError` listing some."""
    name = backbone[len(PREFIX) :]
    known = presets()
    if name not in known:
        shown = ", ".join(sorted(known)[:12])
        raise BackboneError(
            f"Expected --backbone hub:PRESET with a DINOv2, CLIP or SigLIP preset of KerasHub ({shown}, ...). "
            f"Received: {backbone!r}."
        )
    family, handle = known[name]
    return name, family, handle


def check_name(backbone: str, layer: str, preprocessing: str) -> None:
    """Check a hub backbone's settings read from a fingerprint (no KerasHub needed)."""
    if not _NAME.fullmatch(backbone[len(PREFIX) :]):
        raise BackboneError(f"Expected hub:PRESET with a preset name. Received: {backbone!r:.80}.")
    families = [f for f in FAMILIES.values() if f.layer == layer and f.preprocessing == preprocessing]
    if not families:
        raise BackboneError(
            f"Expected a layer and preprocessing of a hub family ({', '.join(f'{f.layer} + {f.preprocessing}' for f in FAMILIES.values())}). "
            f"Received: {layer!r} + {preprocessing!r}."
        )


def text_family(backbone: str, layer: str, preprocessing: str) -> Family | None:
    """The family of a cache's settings when its rows can be compared with a text tower's embeddings
    (a CLIP or SigLIP preset cut at its image embedding); None otherwise. No KerasHub needed."""
    if not is_hub(backbone) or layer != TEXT_LAYER:
        return None
    for family in FAMILIES.values():
        if family.text_preprocessor and family.layer == layer and family.preprocessing == preprocessing:
            return family
    return None


def folder_digest(folder: Path) -> str:
    """``sha256:`` of a local preset folder's files (config, weights, image converter), in name order."""
    digest = hashlib.sha256()
    found = False
    for name in _FILES:
        path = folder / name
        if path.is_file():
            found = True
            digest.update(name.encode() + b"\0")
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
    if not found or not (folder / "config.json").is_file():
        raise BackboneError(
            f"Expected --weights to be a KerasHub preset folder (config.json, model.weights.h5). Received: {folder}."
        )
    problem = h5safety.file_problem(folder / "model.weights.h5") if (folder / "model.weights.h5").is_file() else None
    if problem:
        raise BackboneError(
            f"Expected preset weights that keep their data in themselves. Received: {folder / 'model.weights.h5'} "
            f"({problem})."
        )
    return f"sha256:{digest.hexdigest()}"


def read_config(family: Family, handle: str, folder: str | None) -> dict[str, Any]:
    """The preset's ``config.json``, checked to be of ``family``'s class (from ``folder``, or
    downloaded by KerasHub: offline that is a `WeightsDownloadError` with the way out)."""
    if folder is not None:
        try:
            config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as err:
            raise BackboneError(f"Expected a readable config.json in {folder}. Received: {err}.") from None
    else:
        from keras_hub.src.utils.preset_utils import load_json

        try:
            config = load_json(handle)
        except Exception as err:  # noqa: BLE001 - kagglehub raises many kinds when offline
            raise offline_error(handle, err, family) from None
    if not isinstance(config, dict) or config.get("registered_name") != f"keras_hub>{family.class_name}":
        got = config.get("registered_name") if isinstance(config, dict) else type(config).__name__
        raise BackboneError(
            f"Expected a {family.class_name} preset (registered_name keras_hub>{family.class_name}). "
            f"Received: {got!r:.80}."
        )
    return config


def offline_error(handle: str, err: Exception, family: Family | None = None) -> WeightsDownloadError:
    first = first_line(err, 100)
    text = (
        f" (and keras_hub.models.{family.tokenizer}.from_preset('{handle}').save_to_preset('FOLDER') for its text "
        "tower: train --head zeroshot, similar --text)"
        if family is not None and family.tokenizer
        else ""
    )
    return WeightsDownloadError(
        f"Could not download the KerasHub preset {handle}: {first}. Where there is network, run "
        f"keras_hub.models.Backbone.from_preset('{handle}').save_to_preset('FOLDER'){text}, copy FOLDER here "
        f"and pass --weights FOLDER."
    )


def image_size(family: Family, config: dict[str, Any]) -> int:
    """The square input side the preset was built for."""
    inner = config.get("config", {})
    if family.name != "dinov2":
        inner = inner.get("vision_encoder", {}).get("config", {})
    shape = inner.get("image_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and isinstance(shape[0], int) and shape[0] == shape[1]):
        raise BackboneError(f"Expected a square image_shape in the preset's config. Received: {shape!r:.80}.")
    return int(shape[0])


def build(family: Family, handle: str, folder: str | None, load_weights: bool, input_size: int):
    """A Keras model from preprocessed pictures ``(batch, size, size, 3)`` to the family's embedding."""
    import keras

    keras_hub = _keras_hub()
    cls = getattr(keras_hub.models, family.class_name)
    preset = folder if folder is not None else handle
    try:
        backbone = cls.from_preset(preset, load_weights=load_weights)
    except (BackboneError, WeightsDownloadError):
        raise
    except Exception as err:  # noqa: BLE001
        if folder is None:
            raise offline_error(handle, err, family) from None
        first = first_line(err, 200)
        raise BackboneError(f"Could not build {family.class_name} from {folder}: {first}.") from None
    images = keras.Input((input_size, input_size, 3), name="images")
    if family.name == "dinov2":
        tokens = backbone({"images": images})  # (batch, 1 + registers + patches, hidden), layer-normalised
        x = keras.layers.Cropping1D((0, int(tokens.shape[1]) - 1), name="class_token_crop")(tokens)
        x = keras.layers.Flatten(name="class_token")(x)
    elif family.name == "clip":
        x = backbone.vision_encoder({"images": images})
        x = backbone.vision_pooler(x)
        x = backbone.vision_projection(x)
    else:
        x = backbone.vision_encoder({"images": images})
    return keras.Model(images, x, name=f"{family.name}_{family.layer}")
