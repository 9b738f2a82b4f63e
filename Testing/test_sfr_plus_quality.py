"""The quality estimate, the estimate trust rule, the published round and the bad input of SFR+."""

from __future__ import annotations

import json

import numpy as np
import pytest

from SFRSegmenterLib import quality, sfrplus


def _blob(shape, centre, radius):
    zz, yy, xx = np.indices(shape)
    return ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) <= radius ** 2


def test_largest_component_removes_islands_per_class_and_keeps_the_structure():
    label = np.zeros((20, 20, 20), np.uint8)
    label[_blob(label.shape, (6, 6, 6), 4)] = 1
    label[_blob(label.shape, (15, 15, 15), 1)] = 1  # an island of class 1
    label[_blob(label.shape, (6, 15, 6), 3)] = 2
    label[0, 0, 19] = 2  # a one-voxel island of class 2
    out = quality.keep_largest_component(label, 3)
    assert out[15, 15, 15] == 0 and out[0, 0, 19] == 0
    assert np.array_equal(out == 1, _blob(label.shape, (6, 6, 6), 4))
    assert np.array_equal(out == 2, _blob(label.shape, (6, 15, 6), 3))
    # a class with one component, and the background, are unchanged
    single = _blob(label.shape, (6, 6, 6), 4).astype(np.uint8)
    assert np.array_equal(quality.keep_largest_component(single, 2), single)


def test_signals_measure_agreement_confidence_inside_the_structure_and_size():
    shape = (16, 16, 16)
    label = np.zeros(shape, np.uint8)
    label[_blob(shape, (8, 8, 8), 4)] = 1
    sam = np.zeros(shape, np.uint8)
    sam[_blob(shape, (8, 8, 9), 4)] = 1  # shifted by one voxel
    conf = np.full(shape, 0.999, np.float32)
    conf[label == 1] = 0.8
    sig = quality.class_signals(label, conf, sam, voxel_mm3=2.0, labeled_mm3=[2.0 * (label == 1).sum() / 2], num_classes=2)
    inter = np.count_nonzero((label == 1) & (sam == 1))
    assert sig["agreement"][0] == pytest.approx(2 * inter / ((label == 1).sum() + (sam == 1).sum()), abs=1e-6)
    assert sig["structure_confidence"][0] == pytest.approx(0.8, abs=1e-6)  # not the whole volume's 0.99
    assert sig["size_ratio"][0] == pytest.approx(2.0)
    # without SAM's label there is no agreement and no estimate
    alone = quality.class_signals(label, conf, None, 2.0, None, 2)
    assert "agreement" not in alone and quality.estimate(alone) is None
    est = quality.estimate(sig, quality.AGREEMENT_ONLY)
    assert est["estimated_dice"] == pytest.approx(sig["agreement"][0], abs=1e-6)


def test_fit_calibration_recovers_a_linear_law_and_refuses_too_little_data():
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(40):
        agree, conf, ratio = rng.uniform(0.3, 0.95), rng.uniform(0.6, 0.99), float(np.exp(rng.uniform(-1, 1)))
        truth = 0.1 + 0.8 * agree + 0.05 * conf - 0.1 * abs(np.log(ratio))
        rows.append(({"agreement": [agree], "structure_confidence": [conf], "size_ratio": [ratio]}, [truth]))
    cal = quality.fit_calibration(rows, "test", ridge=0.0)
    assert cal.intercept == pytest.approx(0.1, abs=1e-4)
    assert cal.weights == pytest.approx((0.8, 0.05, -0.1), abs=1e-4)
    assert quality.fit_calibration(rows[:3], "test") is None
    acc = quality.accuracy([quality.estimate(s, cal)["estimated_dice"] for s, _ in rows], [t[0] for _, t in rows])
    assert acc["spearman"] > 0.99 and acc["mae"] < 1e-3


def test_fit_calibration_weights_count_like_repeated_rows():
    rng = np.random.default_rng(1)
    rows = []
    for i in range(30):
        agree, conf, ratio = rng.uniform(0.3, 0.95), rng.uniform(0.6, 0.99), float(np.exp(rng.uniform(-1, 1)))
        noise = rng.normal(0, 0.05) + (0.2 if i < 10 else 0.0)  # two 'datasets' of different levels
        rows.append(({"agreement": [agree], "structure_confidence": [conf], "size_ratio": [ratio]},
                     [0.1 + 0.5 * agree + 0.3 * conf + noise]))
    weighted = quality.fit_calibration(rows, "w", weights=[2.0] * 10 + [1.0] * 20)
    repeated = quality.fit_calibration(rows[:10] + rows, "r")
    assert weighted.intercept == pytest.approx(repeated.intercept, abs=1e-6)
    assert weighted.weights == pytest.approx(repeated.weights, abs=1e-6)
    # weight 0 leaves a row out
    dropped = quality.fit_calibration(rows, "d", weights=[0.0] * 10 + [1.0] * 20)
    alone = quality.fit_calibration(rows[10:], "a")
    assert dropped.weights == pytest.approx(alone.weights, abs=1e-6)


def _entry(est, fg=1000, conf=0.99):
    return {"estimated_dice": est, "confidence": conf, "foreground_voxels": fg, "voxel_mm3": 1.0}


def test_estimate_rule_trusts_the_best_fraction_above_the_floor_with_the_size_guard():
    context = sfrplus.TrustContext((1000.0,))
    policy = sfrplus.EstimatedQuality(fraction=0.5, floor=0.6,
                                      fallback=sfrplus.ConfidenceAndSize(tau=0.985, min_structure=0.25))
    entries = {"a": _entry(0.9), "b": _entry(0.8), "c": _entry(0.7), "d": _entry(0.2),
               "tiny": _entry(0.95, fg=10), "none": _entry(None, conf=0.99)}
    decided = policy.decide(entries, context)
    # 5 cases with an estimate: the best 2 ('tiny' fails the size guard), 'none' by the paper's rule
    assert decided == {"a": True, "b": False, "c": False, "d": False, "tiny": False, "none": True}
    low = {c: _entry(0.5) for c in "abcd"}
    assert not any(policy.decide(low, context).values())  # nobody above the floor: nobody trusted
    assert "estimated Dice" in policy.describe()


def test_the_published_round_is_the_best_estimated_one_that_did_not_drift():
    def rec(r, est, drift=False):
        out = sfrplus.RoundRecord(r, [], [], [], [], [], 0.99, {}, mean_estimated_dice=est)
        out.drift = drift
        return out

    history = [rec(0, 0.70), rec(1, 0.75), rec(2, 0.80, drift=True)]
    assert sfrplus.choose_round(history) == 1
    assert [h.published for h in history] == [False, True, False]
    assert history[0].why.startswith("dropped: round 1 is estimated better") and "drifted" in history[2].why
    worse = [rec(0, 0.70), rec(1, 0.65)]
    assert sfrplus.choose_round(worse) == 0 and "0.6500 vs 0.7000" in worse[1].why
    tie = [rec(0, 0.70), rec(1, 0.70)]
    assert sfrplus.choose_round(tie) == 0  # plain SFR unless a round is estimated better
    close = [rec(0, 0.70), rec(1, 0.715)]  # a lead within the estimate's error is not enough
    assert sfrplus.choose_round(close) == 0 and "margin" in close[1].why
    assert sfrplus.choose_round(close, margin=0.0) == 1
    unknown = [rec(0, None), rec(1, 0.9)]
    assert sfrplus.choose_round(unknown) == 1 and "paper's rule" in unknown[1].why


@pytest.mark.parametrize("args, word", [
    (["--trust", "nope"], "--trust"),
    (["--trust-fraction", "1.5"], "--trust-fraction"),
    (["--trust-floor", "-0.1"], "--trust-floor"),
    (["--rounds", "-1"], "--rounds"),
    (["--round-retrain", "some"], "--round-retrain"),
])
def test_bad_trust_options_are_refused_before_any_work(tmp_path, sample_dir, args, word):
    from conftest import run_sfr
    from SFRSegmenterLib.manifest import init_project

    root = tmp_path / "proj"
    init_project(root, sample_dir / "images", sample_dir / "labels", labeled=2)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    proc = run_sfr("run", root, "--backbone", "tiny_test", "--device", "cpu", "--sfr-plus", *args)
    assert proc.returncode == 2, proc.stderr
    assert word in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written


def test_rounds_json_and_review_json_agree_with_the_policy_on_the_cached_measurements(tmp_path, sample_dir):
    """The benchmark reads what the product decided; the product's decision is its policy on its
    cached measurements (the same function a benchmark would call)."""
    import sys
    from pathlib import Path

    from conftest import run_sfr
    from SFRSegmenterLib.manifest import init_project, load_project
    from SFRSegmenterLib.run.config import load_run_config
    from SFRSegmenterLib.run.pipeline import Pipeline

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import sfr_plus_product

    cases = tmp_path / "cases.txt"
    cases.write_text("hippocampus_001\nhippocampus_003\nhippocampus_004\nhippocampus_006\nhippocampus_008\n")
    root = tmp_path / "proj"
    init_project(root, sample_dir / "images", sample_dir / "labels", cases=cases, labeled=2)
    run_sfr("run", root, "--backbone", "tiny_test", "--iterations-sam", "3", "--iterations-vnet", "3", "--device", "cpu",
            "--vnet-option", "filters=4", "--sfr-plus", "--rounds", "1", "--trust-floor", "0", "--trust-fraction", "0.34", "--min-structure", "0",
            "--no-report", check=True)
    run = root / "runs" / (root / "runs" / "latest").read_text().strip()
    summary = sfr_plus_product.summarize_run(run)
    rounds = json.loads((run / "rounds.json").read_text())["rounds"]
    pipe = Pipeline(load_project(root), run, load_run_config(run))
    for rec, bench_row in zip(rounds, summary["rounds"]):
        entries = pipe.with_estimates(pipe.measurements(run / "stages" / f"confidence-r{rec['round']}"))
        decided = pipe.trust(entries)
        assert sorted(c for c, t in decided.items() if t) == rec["trusted"] == bench_row["trusted"]
        assert {c: row["trusted"] for c, row in bench_row["cases"].items()} == decided
    # fraction 0.34 of 3 cases: the one case of highest estimate is trusted in round 0
    est = {c: row["estimated_dice"] for c, row in rounds[0]["cases"].items()}
    assert rounds[0]["trusted"] == [sorted(est, key=lambda c: (-est[c], c))[0]]
    review = json.loads((run / "review.json").read_text())
    final = rounds[json.loads((run / "rounds.json").read_text())["final_round"]]
    assert {e["case"]: e["trusted"] for e in review["cases"]} == {c: row["trusted"] for c, row in final["cases"].items()}


def test_sfr_predict_segments_as_the_run_did(tmp_path, sample_dir):
    """A published model carries its post-processing: 'sfr predict' on a run's case gives the run's label."""
    from conftest import run_sfr
    from SFRSegmenterLib.io import read_label
    from SFRSegmenterLib.manifest import init_project

    cases = tmp_path / "cases.txt"
    cases.write_text("hippocampus_001\nhippocampus_003\nhippocampus_004\n")
    root = tmp_path / "proj"
    init_project(root, sample_dir / "images", sample_dir / "labels", cases=cases, labeled=2)
    run_sfr("run", root, "--backbone", "tiny_test", "--iterations-sam", "3", "--iterations-vnet", "20", "--device",
            "cpu", "--vnet-option", "filters=4", "--no-report", check=True)
    run = root / "runs" / (root / "runs" / "latest").read_text().strip()
    assert json.loads((run / "vnet" / "postprocess.json").read_text()) == {"largest_component": True}
    out = tmp_path / "pred"
    run_sfr("predict", "--model", run / "vnet", "--images", sample_dir / "images" / "hippocampus_004.nii.gz",
            "--out", out, "--device", "cpu", check=True)
    mine = read_label(out / "hippocampus_004.nii.gz").array
    assert np.array_equal(mine, read_label(run / "pseudo" / "hippocampus_004.nii.gz").array)
    raw = tmp_path / "raw"
    run_sfr("predict", "--model", run / "vnet", "--images", sample_dir / "images" / "hippocampus_004.nii.gz",
            "--out", raw, "--device", "cpu", "--no-largest-component", check=True)
    plain = read_label(raw / "hippocampus_004.nii.gz").array
    assert np.array_equal(quality.keep_largest_component(plain, 3), mine)
