"""``label_next``: every unlabeled case ranked by the expected help of labeling it."""

from __future__ import annotations

import json

import pytest

from SFRSegmenterLib.labelnext import rank_cases


def entry(case, conf, size=1000.0, slices=10, **extra):
    return {"case": case, "confidence": 0.99, "foreground_voxels": int(size), "structure_mm3": size,
            "slice_confidence": [None] * 3 + [conf] * slices + [None] * 3, **extra}


def test_lowest_quality_first_and_empty_prediction_on_top():
    ranked = rank_cases([entry("good", 0.97), entry("bad", 0.70), entry("empty", 0.0, size=0, slices=0)])
    assert [r["case"] for r in ranked] == ["empty", "bad", "good"]
    assert [r["rank"] for r in ranked] == [1, 2, 3]
    assert ranked[0]["reason"] == "no structure predicted"
    assert ranked[1]["basis"] == "confidence" and "0.70" in ranked[1]["reason"]


def test_estimated_dice_wins_over_confidence_when_present():
    ranked = rank_cases([entry("a", 0.70, estimated_dice=0.95), entry("b", 0.95, estimated_dice=0.60)])
    assert [r["case"] for r in ranked] == ["b", "a"] and ranked[0]["basis"] == "estimated_dice"


def test_diversity_spreads_alike_cases():
    cases = [entry("twin1", 0.80), entry("twin2", 0.80), entry("other", 0.83, slices=25)]
    ranked = [r["case"] for r in rank_cases(cases)]
    assert ranked[0] in ("twin1", "twin2") and ranked[1] == "other"


def test_every_case_once():
    cases = [entry(f"c{i}", 0.6 + 0.03 * i, size=500 + 100 * i) for i in range(9)]
    assert sorted(r["case"] for r in rank_cases(cases)) == sorted(c["case"] for c in cases)
    assert rank_cases([]) == []


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_run_copy):
    return tiny_run_copy(tmp_path_factory.mktemp("next") / "proj")


def test_run_and_review_write_label_next(finished, sfr, tmp_path):
    from SFRSegmenterLib.manifest import load_project

    root, run = finished
    review = json.loads((run / "review.json").read_text())
    unlabeled = sorted(c.name for c in load_project(root).by_role("unlabeled"))
    assert sorted(n["case"] for n in review["label_next"]) == unlabeled
    assert "What to label next" in (run / "report.html").read_text()
    out = tmp_path / "rev"
    project = load_project(root)
    image = project.image_path(project.case(unlabeled[0]))
    proc = sfr("review", "--model", run / "vnet", "--images", image, "--out", out, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert [n["case"] for n in json.loads((out / "review.json").read_text())["label_next"]] == [unlabeled[0]]


def test_the_panels_line_reads_the_runs_review(finished):
    from SFRSegmenterLib.labelnext import read_label_next, summary

    _, run = finished
    ranked = read_label_next(run)
    assert ranked and summary(ranked).startswith(f"label next: {ranked[0]['case']} (")
    assert read_label_next(run / "nowhere") == [] and summary([]) == "no unlabeled case to suggest"
