"""Zero-shot heads and text queries on caches of CLIP and SigLIP presets: the text tower meets the cached image embeddings.

`class_texts` embeds the class names (in each prompt) with the text tower of the preset a cache
was extracted with (`headstart.extractor.text`); `train` and `compare` hand them to the zeroshot
head (`headstart.heads.zeroshot`) and are `headstart.heads.training`'s for every other head;
`similar_text` ranks a cache's pictures by cosine to a sentence. A cache of any other backbone
is refused in one line (`TextTowerError`) before anything is built.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from headstart.cache import open_cache
from headstart.errors import HeadError, SimilarError, TextTowerError
from headstart.heads import training
from headstart.heads.names import DEFAULT_HEADS, ZEROSHOT
from headstart.heads.registry import make_head
from headstart.heads.rundir import COMPARISON_KIND, RUN_KIND, check_out
from headstart.heads.split import SplitSpec, assign
from headstart.heads.zeroshot import ClassTexts, fill, unit_rows
from headstart.settings.config import check_cache_settings, config_of
from headstart.similar import ExactSearch, QueryResult, _allowed_rows, neighbours

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 1000


def text_tower(cache, weights: str | os.PathLike | None = None):
    """The text tower of an open cache's preset (`headstart.extractor.text.TextTower`); the preset
    folder (the cache's, or ``weights`` when it moved) is checked against the fingerprint first."""
    from headstart.extractor.text import check_text_cache, load_text_tower
    from headstart.ship.runs import run_config

    config = config_of(cache)
    check_text_cache(config, str(cache.path))
    info = {"cache": {"fingerprint": cache.fingerprint, "weights_path": cache.weights_path}}
    return load_text_tower(run_config(info, cache.path, weights))


def class_texts(
    cache_path: str | os.PathLike, prompts: Sequence[str], weights: str | os.PathLike | None = None
) -> ClassTexts:
    """The text tower's embedding of each class of a cache, its name filled into each prompt
    (``_`` read as a space) and the prompts averaged as unit vectors; with the preset's logit scale."""
    from headstart.heads.zeroshot import check_prompts

    try:
        prompts = check_prompts(prompts)
    except ValueError as err:
        raise HeadError(str(err)) from None
    with open_cache(cache_path) as cache:
        tower = text_tower(cache, weights)
        names = list(cache.class_names)
        texts = [[fill(p, name) for p in prompts] for name in names]
        flat = tower.embed([t for row in texts for t in row])
        if flat.shape[1] != cache.dim:
            raise TextTowerError(
                f"Expected a text tower of {cache.dim} values, the size of {cache.path}'s rows. "
                f"Received: {flat.shape[1]}; the preset is not the one the cache was extracted with."
            )
        per_prompt = unit_rows(flat).reshape(len(names), len(prompts), cache.dim)
        embeddings = unit_rows(per_prompt.mean(axis=1))
        backbone = config_of(cache).backbone
    log.info("embedded %d classes x %d prompts with the text tower of %s", len(names), len(prompts), backbone)
    return ClassTexts(
        embeddings=embeddings,
        logit_scale=tower.logit_scale,
        logit_bias=tower.logit_bias,
        family=tower.family,
        prompts=prompts,
        texts=texts,
        preset=backbone,
    )


def _no_weights(weights) -> None:
    if weights is not None:
        raise HeadError(
            f"--weights (the preset folder of the text tower) applies to the {ZEROSHOT} head only. Leave it out."
        )


def train(
    cache_path: str | os.PathLike,
    head: str = "logreg",
    out: str | os.PathLike = "runs/logreg",
    *,
    params=None,
    weights: str | os.PathLike | None = None,
    **kwargs,
) -> training.TrainResult:
    """`headstart.heads.training.train`, with the class texts computed for the zeroshot head
    (its ``prompts`` option: the templates; ``weights``: the preset folder, when it moved)."""
    params = dict(params or {})
    if head != ZEROSHOT:
        _no_weights(weights)
        return training.train(cache_path, head, out, params=params, **kwargs)
    check_cache_settings(cache_path)
    built = make_head(head, **params)  # bad options, then a bad --out, fail before the tower loads
    check_out(Path(out), RUN_KIND)
    texts = class_texts(cache_path, built.prompts, weights)
    return training.train(cache_path, head, out, params=params, texts=texts, **kwargs)


def compare(
    cache_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    heads: Sequence[str] = DEFAULT_HEADS,
    params=None,
    weights: str | os.PathLike | None = None,
    **kwargs,
) -> training.CompareResult:
    """`headstart.heads.training.compare`, with the class texts computed when the zeroshot head is
    among ``heads``, so it sits in the table beside the heads trained on the same split."""
    params = dict(params or {})
    if ZEROSHOT not in heads:
        _no_weights(weights)
        return training.compare(cache_path, out, heads=heads, params=params, **kwargs)
    check_cache_settings(cache_path)
    from headstart.heads.registry import head_params

    built = make_head(ZEROSHOT, **{k: v for k, v in params.items() if k in head_params(ZEROSHOT)})
    check_out(Path(out), COMPARISON_KIND)
    texts = class_texts(cache_path, built.prompts, weights)
    return training.compare(cache_path, out, heads=heads, params=params, texts=texts, **kwargs)


def similar_text(
    cache_path: str | os.PathLike,
    texts: Sequence[str],
    *,
    k: int = 10,
    exclude_split: Sequence[str] = (),
    only_split: Sequence[str] = (),
    split: SplitSpec = SplitSpec(),
    weights: str | os.PathLike | None = None,
    index: bool = False,
) -> list[QueryResult]:
    """The ``k`` pictures of a CLIP or SigLIP cache whose image embedding is nearest, by plain
    cosine, to the text tower's embedding of each sentence (as the model compares them: not centred)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise SimilarError(f"Expected -k of 1 or more. Received: {k}.")
    for t in texts:
        if not isinstance(t, str) or not t.strip() or len(t) > MAX_TEXT_CHARS:
            raise SimilarError(f"Expected --text of 1 to {MAX_TEXT_CHARS} characters. Received: {t!r:.80}.")
    if not texts:
        raise SimilarError("Expected at least one --text. Received: none.")
    if index:
        raise SimilarError(
            "Expected --text without --index: the index holds centred picture features, and a text is "
            "compared with the image embeddings as they are. Received: both; leave out --index."
        )
    check_cache_settings(cache_path)
    with open_cache(cache_path, require_finite=True) as cache:
        allowed = _allowed_rows(cache, split, exclude_split, only_split)
        tower = text_tower(cache, weights)
        queries = tower.embed(list(texts))
        if queries.shape[1] != cache.dim:
            raise TextTowerError(
                f"Expected a text tower of {cache.dim} values, the size of {cache.path}'s rows. "
                f"Received: {queries.shape[1]}."
            )
        search = ExactSearch(cache, centre=False)
        found = search.search(search.normalise(queries), k, allowed)
        codes = assign(cache.paths, split)
        return [
            QueryResult(query=t, source="text", neighbours=neighbours(cache, hits, codes))
            for t, hits in zip(texts, found)
        ]
