"""End to end on real photos with real ImageNet weights (MobileNet 0.25): features that separate cats from dogs."""

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from conftest import MOBILENET_WEIGHTS, PETS, needs_shared
from headstart import open_cache
from headstart.cli import app


@needs_shared
def test_mobilenet_features_of_pets_sample_separate_cats_from_dogs(tmp_path):
    out = tmp_path / "pets-mobilenet.h5"
    result = CliRunner().invoke(app, [
        "extract", str(PETS), "--out", str(out), "--backbone", "mobilenet", "--alpha", "0.25",
        "--weights", str(MOBILENET_WEIGHTS), "--precision", "float32", "-q",
    ])
    assert result.exit_code == 0, result.output
    with open_cache(out) as cache:
        assert len(cache) == 300 and cache.dim == 256 and cache.counts() == {"Cat": 150, "Dog": 150}
        X, y = cache.read(), cache.labels
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)).fit(X_train, y_train)
    accuracy = clf.score(X_test, y_test)
    assert accuracy >= 0.85, accuracy
    assert np.isfinite(X).all()
