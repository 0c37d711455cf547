"""The planted-problem test: real pets photos, real MobileNet weights, known problems, found by audit."""

from __future__ import annotations

import json

import pytest
from conftest import MOBILENET_WEIGHTS, PETS, needs_shared, plant_problems


@pytest.mark.slow
@needs_shared
@pytest.mark.skipif(not MOBILENET_WEIGHTS.is_file(), reason="no shared MobileNet weights")
def test_audit_finds_the_planted_problems(tmp_path):
    from headstart.audit import audit
    from headstart.extractor.options import make_config
    from headstart.extractor.runner import extract

    planted = plant_problems(PETS, tmp_path / "pets")
    config = make_config("mobilenet", weights=str(MOBILENET_WEIGHTS), alpha=0.25)
    extract(tmp_path / "pets", tmp_path / "pets.h5", config)
    result = audit(tmp_path / "pets.h5", tmp_path / "audit")

    top_issues = [i["path"] for i in result.label_issues[:20]]
    groups = [set(g["paths"]) for g in result.duplicates]
    found = lambda pair: any(set(pair) <= g for g in groups)  # noqa: E731
    top_outliers = [o["path"] for o in result.outliers[:10]]
    figures = {
        "flipped_in_top_20_issues": sum(p in top_issues for p in planted["flipped"]),
        "exact_found": sum(found(p) for p in planted["exact"]),
        "near_found": sum(found(p) for p in planted["near"]),
        "outliers_in_top_10": sum(p in top_outliers for p in planted["outliers"]),
        "label_issues": len(result.label_issues),
        "duplicate_groups": len(result.duplicates),
    }
    print("planted-problem figures:", json.dumps(figures))
    assert figures["flipped_in_top_20_issues"] >= 8
    assert figures["exact_found"] == 10
    assert all(g["exact"] for g in result.duplicates if any(set(p) <= set(g["paths"]) for p in planted["exact"]))
    assert figures["near_found"] >= 9
    assert figures["outliers_in_top_10"] >= 3
