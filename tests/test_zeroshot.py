"""Zero-shot heads and text queries: tiny random CLIP and SigLIP presets saved here, checked against KerasHub itself."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images, write_cache
from typer.testing import CliRunner

from headstart.cli import app

keras_hub = pytest.importorskip("keras_hub")
runner = CliRunner()

CLASSES = ("cat", "dog", "bird")
SIZE = 32
SEQUENCE = 48  # tokens a prompt may take: one per letter, as the tiny vocabularies below split words
LETTERS = "abcdefghijklmnopqrstuvwxyz"
PRESETS = {"clip": "hub:clip_vit_base_patch16", "siglip": "hub:siglip_base_patch16_224"}
SCALE = {"clip": (20.0, 0.0), "siglip": (10.0, -3.0)}  # the logit scale and bias set in the tiny presets


def _clip_tokenizer():
    """A CLIP byte-pair tokenizer over single letters (and one merge, cat): ``<|endoftext|>`` has the
    largest id, as CLIP's text pooler (argmax of the ids) expects."""
    tokens = [*LETTERS, *(c + "</w>" for c in LETTERS), "ca", "cat</w>", "<|startoftext|>", "<|endoftext|>"]
    vocabulary = {t: i + 1 for i, t in enumerate(tokens)}  # 0 is padding
    return keras_hub.models.CLIPTokenizer(vocabulary=vocabulary, merges=["c a", "ca t</w>"])


def _siglip_tokenizer():
    """A SentencePiece model of single characters, trained here on a few sentences."""
    import sentencepiece

    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([LETTERS, "a photo of a cat", "a cat asleep on a sofa", "a bird and a dog"]),
        model_writer=proto,
        vocab_size=40,
        model_type="char",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        hard_vocab_limit=False,
    )
    return keras_hub.models.SigLIPTokenizer(proto=proto.getvalue())


def _model(family: str):
    common = dict(num_layers=1, num_heads=2, intermediate_dim=32)
    if family == "clip":
        vision = keras_hub.models.CLIPVisionEncoder(patch_size=8, hidden_dim=16, image_shape=(SIZE, SIZE, 3), **common)
        text = keras_hub.models.CLIPTextEncoder(
            vocabulary_size=64, embedding_dim=16, hidden_dim=16, max_sequence_length=SEQUENCE, **common
        )
        model = keras_hub.models.CLIPBackbone(vision, text, projection_dim=12)
        model.clip_head.logit_scale.assign(np.log(SCALE["clip"][0]))
        pre = keras_hub.models.CLIPPreprocessor(_clip_tokenizer(), sequence_length=SEQUENCE)
    else:
        vision = keras_hub.models.SigLIPVisionEncoder(
            patch_size=8, hidden_dim=16, image_shape=(SIZE, SIZE, 3), **common
        )
        text = keras_hub.models.SigLIPTextEncoder(
            vocabulary_size=64, embedding_dim=16, hidden_dim=16, max_sequence_length=SEQUENCE, **common
        )
        model = keras_hub.models.SigLIPBackbone(vision, text)
        model.siglip_head.logit_scale.assign(np.log(SCALE["siglip"][0]))
        model.siglip_head.logit_bias.assign(SCALE["siglip"][1])
        pre = keras_hub.models.SigLIPPreprocessor(_siglip_tokenizer(), sequence_length=SEQUENCE)
    return model, pre


@pytest.fixture(scope="module", params=["clip", "siglip"])
def zs(request, tmp_path_factory):
    """A tiny random preset saved as a KerasHub preset folder, pictures of three classes, and their
    cache extracted from that folder (float32). The CLIP folder holds the model and its tokenizer
    alone (the preprocessor is built from the tokenizer, as for a folder saved by the advice of the
    offline message); the SigLIP folder also holds preprocessor.json."""
    family = request.param
    base = tmp_path_factory.mktemp(f"zeroshot-{family}")
    model, pre = _model(family)
    folder = base / "preset"
    model.save_to_preset(str(folder))
    (pre.tokenizer if family == "clip" else pre).save_to_preset(str(folder))
    assert (folder / "preprocessor.json").exists() == (family == "siglip")
    images = make_images(base / "images", per_class=8, classes=CLASSES)
    cache = base / "cache.h5"
    args = ["extract", images, "--out", cache, "--backbone", PRESETS[family], "--weights", folder]
    result = runner.invoke(app, [str(a) for a in args] + ["--precision", "float32", "--dtype", "float32", "-q"])
    assert result.exit_code == 0, result.output
    return {"family": family, "base": base, "folder": folder, "model": model, "pre": pre, "cache": cache}


def _rows(cache):
    from headstart.cache import open_cache

    with open_cache(cache) as c:
        return c.read(0, len(c)).astype(np.float32), np.asarray(c.labels), list(c.paths), Path(c.root)


def _tokens(pre, texts):
    return pre({"images": None, "prompts": np.asarray(texts, dtype=object)})["token_ids"]


def _direct_logits(zs, prompt: str) -> np.ndarray:
    """KerasHub's own logits, picture x class, from the pictures (decoded and normalised as the
    cache was) and the prompts: ``vision_logits`` of the whole model."""
    from headstart.extractor.decode import load_image_hashed
    from headstart.settings import hub

    _, _, paths, root = _rows(zs["cache"])
    pixels = np.stack([load_image_hashed(root / p, (SIZE, SIZE), "squash", False, "float32")[0] for p in paths])
    mean, std = hub.NORMALISATION["clip_mean_std" if zs["family"] == "clip" else "scale_minus1_1"]
    x = ((pixels / 255.0 - np.array(mean)) / np.array(std)).astype(np.float32)
    tokens = np.asarray(_tokens(zs["pre"], [prompt.replace("{}", c) for c in sorted(CLASSES)]))
    out = zs["model"]({"images": x, "token_ids": tokens})
    return np.asarray(out["vision_logits"], np.float64)


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


def test_the_zeroshot_head_is_kerashubs_own_zero_shot_classifier(zs):
    from headstart.heads.run_reader import load_run
    from headstart.heads.split import SplitSpec, assign

    run = zs["base"] / "runs" / "zeroshot"
    prompt = "a photo of a {}"
    result = runner.invoke(app, ["train", str(zs["cache"]), "--head", "zeroshot", "--out", str(run), "--no-plots"])
    assert result.exit_code == 0, result.output
    assert "fitted on no picture" in result.stdout
    info, head = load_run(run)
    tower = info["text_tower"]
    assert tower["family"] == zs["family"] and tower["prompts"] == [prompt]
    assert tower["texts"] == [[f"a photo of a {c}"] for c in sorted(CLASSES)]
    assert tower["logit_scale"] == pytest.approx(SCALE[zs["family"]][0], rel=1e-5)
    assert tower["logit_bias"] == pytest.approx(SCALE[zs["family"]][1], abs=1e-6)

    X, y, paths, _ = _rows(zs["cache"])
    logits = _direct_logits(zs, prompt)
    proba = head.predict_proba(X)
    np.testing.assert_allclose(proba, _softmax(logits), atol=2e-4)
    margin = np.sort(logits, axis=1)[:, -1] - np.sort(logits, axis=1)[:, -2]
    clear = margin > 1e-3  # argmax compared where float rounding cannot swap two classes
    assert clear.sum() >= len(X) - 1
    assert (head.predict(X)[clear] == logits.argmax(axis=1)[clear]).all()

    # evaluate scores the same test split as the trained heads, and its accuracy is KerasHub's
    test = assign(paths, SplitSpec()) == 2
    out = runner.invoke(app, ["evaluate", str(run), "--json"])
    assert out.exit_code == 0, out.output
    metrics = json.loads(out.stdout)["metrics"]
    assert metrics["n"] == int(test.sum()) > 0
    assert metrics["accuracy"] == pytest.approx(float((logits.argmax(axis=1) == y)[test].mean()))


def test_prompts_are_averaged_as_unit_vectors(zs):
    from headstart.heads.run_reader import load_run

    run = zs["base"] / "runs" / "two-prompts"
    prompts = ["a photo of a {}", "a bad photo of the {}"]
    args = ["train", str(zs["cache"]), "--head", "zeroshot", "--out", str(run), "--no-plots"]
    result = runner.invoke(app, args + [a for p in prompts for a in ("--prompt", p)])
    assert result.exit_code == 0, result.output
    _, head = load_run(run)
    text = np.stack(
        [
            np.asarray(
                zs["model"].get_text_embeddings(_tokens(zs["pre"], [p.replace("{}", c) for c in sorted(CLASSES)]))
            )
            for p in prompts
        ]
    )
    text /= np.linalg.norm(text, axis=2, keepdims=True)
    mean = text.mean(axis=0)
    np.testing.assert_allclose(head.arrays_["text"], mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5)
    assert '"prompts=2"' in runner.invoke(app, ["runs", str(run), "--json"]).stdout  # runs names the change


def test_compare_puts_zeroshot_beside_trained_heads_and_runs_lists_it(zs):
    out = zs["base"] / "runs" / "compare"
    result = runner.invoke(app, ["compare", str(zs["cache"]), "--heads", "zeroshot,logreg", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert [r["head"] for r in rows] == ["zeroshot", "logreg"]
    assert (out / "zeroshot" / "confusion.png").is_file() and not (out / "zeroshot" / "curves.png").exists()
    listed = runner.invoke(app, ["runs", str(out), "--json"])
    assert listed.exit_code == 0 and '"zeroshot"' in listed.stdout
    page = out / "report.html"
    assert runner.invoke(app, ["report", str(out), "--out", str(page)]).exit_code == 0 and page.is_file()


def test_the_zeroshot_head_as_keras_layers_predicts_as_it_does(zs):
    from headstart.heads.run_reader import load_run

    run = zs["base"] / "runs" / "keras"
    assert runner.invoke(app, ["train", str(zs["cache"]), "--head", "zeroshot", "--out", str(run)]).exit_code == 0
    _, head = load_run(run)
    X = _rows(zs["cache"])[0]
    np.testing.assert_allclose(np.asarray(head.to_keras()(X)), head.predict_proba(X), atol=1e-5)


def test_the_zeroshot_run_round_trips_through_export(zs):
    run, model = zs["base"] / "runs" / "export", zs["base"] / "zeroshot.keras"
    assert runner.invoke(app, ["train", str(zs["cache"]), "--head", "zeroshot", "--out", str(run)]).exit_code == 0
    result = runner.invoke(app, ["export", str(run), "--out", str(model)])
    assert result.exit_code == 0, result.output
    files = sorted((zs["base"] / "images").rglob("*.jpg"))
    a, b = (
        json.loads(runner.invoke(app, ["predict", str(m), *map(str, files), "--json", "--top-k", "3"]).stdout)
        for m in (run, model)
    )
    assert [p["class"] for p in a["predictions"]] == [q["class"] for q in b["predictions"]]
    diffs = [
        abs(s["probability"] - next(u["probability"] for u in q["top"] if u["class"] == s["class"]))
        for p, q in zip(a["predictions"], b["predictions"])
        for s in p["top"]
    ]
    assert len(diffs) == 3 * len(files) and max(diffs) <= 1e-4


def test_similar_text_ranks_by_kerashubs_cosine(zs):
    text = "a cat asleep on a sofa"
    result = runner.invoke(app, ["similar", str(zs["cache"]), "--text", text, "-k", "24", "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)["results"][0]
    assert found["query"] == text and len(found["neighbours"]) == 24

    X, _, paths, _ = _rows(zs["cache"])
    t = np.asarray(zs["model"].get_text_embeddings(_tokens(zs["pre"], [text])), np.float64)[0]
    cos = (X / np.linalg.norm(X, axis=1, keepdims=True)) @ (t / np.linalg.norm(t))
    order = sorted(range(len(paths)), key=lambda i: (-cos[i], i))
    assert [n["path"] for n in found["neighbours"]] == [paths[i] for i in order]
    np.testing.assert_allclose([n["similarity"] for n in found["neighbours"]], cos[order], atol=1e-5)


def test_a_moved_preset_folder_is_named_and_taken_with_weights(zs, tmp_path):
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(zs["folder"], moved)
    hidden = zs["folder"].with_name("preset-away")
    zs["folder"].rename(hidden)
    try:
        result = runner.invoke(app, ["similar", str(zs["cache"]), "--text", "a cat"])
        assert result.exit_code == 2 and "--weights" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        ok = runner.invoke(app, ["similar", str(zs["cache"]), "--text", "a cat", "--weights", str(moved)])
        assert ok.exit_code == 0, ok.output
    finally:
        hidden.rename(zs["folder"])


def test_a_folder_without_the_tokenizer_says_how_to_add_it_and_the_cache_stays_valid(tmp_path):
    model, pre = _model("clip")
    folder = tmp_path / "preset"
    model.save_to_preset(str(folder))  # what the extraction's offline message said to save, before text
    images = make_images(tmp_path / "images", per_class=3, classes=CLASSES)
    cache = tmp_path / "clip.h5"
    args = ["extract", images, "--out", cache, "--backbone", PRESETS["clip"], "--weights", folder, "-q"]
    assert runner.invoke(app, [str(a) for a in args]).exit_code == 0
    result = runner.invoke(app, ["similar", str(cache), "--text", "a cat"])
    err = result.stderr.strip()
    assert result.exit_code == 2 and len(err.splitlines()) == 1, result.output
    assert "keras_hub.models.CLIPTokenizer.from_preset(" in err and str(folder) in err
    pre.tokenizer.save_to_preset(str(folder))  # as the message says
    result = runner.invoke(app, ["similar", str(cache), "--text", "a cat"])
    assert result.exit_code == 0, result.output


@pytest.fixture
def tiny_cache(tmp_path):
    rng = np.random.default_rng(0)
    return write_cache(
        tmp_path / "tiny.h5",
        rng.normal(size=(12, 32)),
        np.arange(12) % 2,
        [f"c{i % 2}/{i}.jpg" for i in range(12)],
        ["c0", "c1"],
    )


@pytest.mark.parametrize(
    "args",
    [
        ["train", "{cache}", "--head", "zeroshot", "--out", "{out}"],
        ["compare", "{cache}", "--heads", "zeroshot,logreg", "--out", "{out}"],
        ["similar", "{cache}", "--text", "a cat"],
    ],
)
def test_a_cache_without_a_text_tower_is_refused_in_one_line(tiny_cache, tmp_path, args):
    out = tmp_path / "out"
    result = runner.invoke(app, [a.format(cache=tiny_cache, out=out) for a in args])
    err = result.stderr.strip()
    assert result.exit_code == 2 and len(err.splitlines()) == 1 and "Traceback" not in result.output
    assert "CLIP or SigLIP" in err and "tiny.h5" in err and "no text tower" in err
    assert not out.exists()


def test_a_dinov2_cache_has_no_text_tower():
    from headstart.errors import TextTowerError
    from headstart.extractor.text import check_text_cache
    from headstart.settings.config import ExtractionConfig

    config = ExtractionConfig(backbone="hub:dinov2_small", layer="class_token", preprocessing="imagenet_mean_std")
    with pytest.raises(TextTowerError, match="hub:dinov2_small class_token"):
        check_text_cache(config, "dino.h5")
    clip = ExtractionConfig(
        backbone="hub:clip_vit_base_patch16", layer="image_embedding", preprocessing="clip_mean_std"
    )
    assert check_text_cache(clip, "clip.h5").name == "clip"


def test_the_text_tower_offline_is_one_line_naming_the_way_out(tmp_path, monkeypatch):
    from conftest import TINY_FINGERPRINT
    from keras_hub.src.utils import preset_utils

    from headstart.cache import CacheHeader, CacheWriter
    from headstart.settings import hub

    name, (family, handle) = next((n, v) for n, v in hub.presets().items() if v[0].name == "clip")
    fp = {
        **TINY_FINGERPRINT,
        "backbone": f"hub:{name}",
        "layer": "image_embedding",
        "preprocessing": "clip_mean_std",
        "weights": handle,
        "seed": None,
        "dtype": "float32",
    }
    header = CacheHeader(dim=12, dtype="float32", fingerprint=fp, class_names=("cat", "dog"), root=str(tmp_path))
    cache = tmp_path / "clip.h5"
    with CacheWriter(cache, header) as w:
        w.append(np.ones((6, 12), np.float32), [0, 1] * 3, [f"{i}.jpg" for i in range(6)])
        w.close(complete=True)

    def offline(*args, **kwargs):
        raise ConnectionError("Max retries exceeded (NameResolutionError: www.kaggle.com)")

    monkeypatch.setattr(preset_utils, "get_file", offline)
    monkeypatch.setattr(preset_utils, "load_json", offline)
    for args in (
        ["train", str(cache), "--head", "zeroshot", "--out", str(tmp_path / "r")],
        ["similar", str(cache), "--text", "a cat"],
    ):
        result = runner.invoke(app, args)
        err = result.stderr.strip()
        assert result.exit_code == 2 and len(err.splitlines()) == 1, result.output
        assert handle in err and "CLIPTokenizer" in err and "--weights FOLDER" in err


def test_zeroshot_is_refused_where_it_would_learn_nothing(tmp_path, tiny_cache):
    for args in (
        ["sweep", str(tiny_cache), "--head", "zeroshot", "--out", str(tmp_path / "s")],
        ["curve", str(tiny_cache), "--head", "zeroshot", "--out", str(tmp_path / "c")],
        ["train", str(tiny_cache), "--head", "logreg", "--prompt", "a {}", "--out", str(tmp_path / "t")],
        ["train", str(tiny_cache), "--head", "logreg", "--weights", str(tmp_path), "--out", str(tmp_path / "t")],
        ["compare", str(tiny_cache), "--heads", "logreg", "--weights", str(tmp_path), "--out", str(tmp_path / "c")],
        ["train", str(tiny_cache), "--head", "zeroshot", "--prompt", "no placeholder", "--out", str(tmp_path / "t")],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, (args, result.output)
        assert "Traceback" not in result.output
    assert not any(tmp_path.glob("[sct]"))


def test_the_head_without_class_texts_says_how_to_get_them():
    from headstart.errors import HeadError
    from headstart.heads.registry import make_head

    with pytest.raises(HeadError, match="--head zeroshot"):
        make_head("zeroshot").fit(np.ones((4, 3)))


def test_class_names_fill_prompts_as_words_and_prompts_are_never_code():
    from headstart.heads.zeroshot import check_prompts, fill

    assert fill("a photo of a {}.", "golden_retriever") == "a photo of a golden retriever."
    assert fill("a {} {x} {0.__class__}", "cat") == "a cat {x} {0.__class__}"
    for bad in ("no placeholder", "{} and {}", "{0.__class__}", "x" * 400 + "{}", ""):
        with pytest.raises(ValueError, match="prompt"):
            check_prompts([bad])
    with pytest.raises(ValueError, match="one prompt or more"):
        check_prompts("a photo of a {}")  # a bare string, not a list of prompts
