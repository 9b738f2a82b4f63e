"""``sfr run`` end to end on the bundled hippocampus cases with the tiny test SAM and few iterations.

Real subprocesses, real files, real stages F and R (with the tiny random SAM backbone, whose
predictions are meaningless: these tests check the pipeline, not accuracy).
"""

from __future__ import annotations

import json
import shutil
import statistics

import numpy as np
import pytest

from SFRSegmenterLib import confidence as C
from SFRSegmenterLib.io import read_image, read_label

CASES = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006", "hippocampus_008"]
TINY = ["--backbone", "tiny_test", "--iterations-sam", "3", "--iterations-vnet", "3", "--device", "cpu",
        "--vnet-option", "filters=4"]


def make_project(root, sample_dir, cases=CASES, labeled=2, validation=1):
    from SFRSegmenterLib.manifest import init_project

    lst = root.parent / f"{root.name}-cases.txt"
    lst.write_text("\n".join(cases) + "\n")
    init_project(root, sample_dir / "images", sample_dir / "labels", cases=lst, labeled=labeled,
                 validation=validation)
    return root


def latest(root):
    rid = (root / "runs" / "latest").read_text().strip()
    return root / "runs" / rid


def stages(run):
    return json.loads((run / "stages.json").read_text())


@pytest.fixture(scope="module")
def sfr_runs(tmp_path_factory, tiny_run_copy):
    """A plain SFR run (the session's, copied), then an SFR+ run (1 round) with tau splitting the cases."""
    from conftest import run_sfr

    root, sfr_run = tiny_run_copy(tmp_path_factory.mktemp("e2e") / "proj")
    confs = [c["confidence"] for c in json.loads((sfr_run / "review.json").read_text())["cases"]]
    tau = statistics.median(confs)
    # --min-structure 0: the paper's rule (confidence only), so that the median tau splits the cases
    second = run_sfr("--progress", "json", "run", root, *TINY, "--sfr-plus", "--rounds", "1", "--tau", repr(tau),
                     "--min-structure", "0", "--trust", "confidence", check=True)
    return {"root": root, "sfr": sfr_run, "plus": latest(root), "tau": tau, "stdout": second.stdout}


def test_run_folder_has_every_result(sfr_runs, sample_dir):
    run = sfr_runs["plus"]
    root = sfr_runs["root"]
    unlabeled = CASES[2:4]
    for case in unlabeled:
        image = read_image(sample_dir / "images" / f"{case}.nii.gz")
        label = read_label(run / "pseudo" / f"{case}.nii.gz", reference=image, num_classes=3)
        conf = read_image(run / "pseudo" / f"{case}_confidence.nii.gz")
        low = read_label(run / "pseudo" / f"{case}_lowconf.nii.gz", reference=image, num_classes=2)
        assert conf.spacing == image.spacing and conf.origin == image.origin
        assert np.all(conf.array >= 1 / 3 - 1e-5) and np.all(conf.array <= 1 + 1e-5)
        assert label.array.dtype == np.uint8 and low.array.max() <= 1
    assert (run / "vnet" / "model.pt").exists()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["sfr_plus"] and cfg["resolved_rounds"] == 1 and cfg["backbone"] == "tiny_test"
    metrics = json.loads((run / "metrics.json").read_text())
    assert {r["case"] for r in metrics["pseudo_labels"]["cases"]} == set(unlabeled)
    assert {r["case"] for r in metrics["validation"]["cases"]} == {CASES[4]}
    assert (run / "validation" / f"{CASES[4]}.nii.gz").exists()
    assert (root / "runs" / "latest").read_text().strip() == run.name
    log = (run / "log.txt").read_text()
    assert "round 0:" in log and "finished" in log
    evs = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    progress = [e for e in evs if e["event"] == "progress"]
    assert progress and all({"stage", "step", "total", "eta_s"} <= set(e) for e in progress)
    # the collapse guard: per foreground class, predicted and target share in both training stages
    for stage in ("finetune", "retrain"):
        watched = [e for e in progress if e["stage"] == stage]
        assert watched and all(len(e["fg_pred"]) == len(e["fg_true"]) == 2 for e in watched)
    vnet_meta = json.loads((run / "stages" / "retrain-r0" / "meta.json").read_text())
    sam_meta = json.loads((run / "stages" / "finetune-r0" / "sam-model.json").read_text())
    for meta in (vnet_meta, sam_meta):
        assert len(meta["class_balance"]["classes"]) == 2 and "collapsed" in meta["class_balance"]
    # --progress json printed the same kind of events on stdout, ending with the result
    out = [json.loads(line) for line in sfr_runs["stdout"].splitlines() if line.startswith("{")]
    assert out[-1]["event"] == "result" and out[-1]["run_id"] == run.name
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "done"
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "Flagged slices" in html
    assert "Class balance during training" in html
    rounds = json.loads((run / "rounds.json").read_text())
    assert "structure / labeled" in html and f"Results shown and saved: round {rounds['final_round']}." in html


def test_review_json_matches_the_confidence_maps(sfr_runs):
    run = sfr_runs["plus"]
    review = json.loads((run / "review.json").read_text())
    from SFRSegmenterLib.review import RECORD_KEYS

    assert set(review) == {"cases", "estimate", "label_next"}  # label_next: ..labelnext
    assert sorted(n["case"] for n in review["label_next"]) == sorted(CASES[2:4])
    assert [c["case"] for c in review["cases"]] == CASES[2:4]
    for entry in review["cases"]:
        assert list(entry) == list(RECORD_KEYS)
        assert 0 <= entry["estimated_dice"] <= 1 and len(entry["estimated_dice_per_class"]) == 2
        conf = read_image(run / "pseudo" / f"{entry['case']}_confidence.nii.gz").array
        label = read_label(run / "pseudo" / f"{entry['case']}.nii.gz").array
        low = read_label(run / "pseudo" / f"{entry['case']}_lowconf.nii.gz").array
        # Eq. 8 straight from the map
        assert entry["confidence"] == pytest.approx(float(conf.mean(dtype=np.float64)), abs=1e-6)
        assert entry["trusted"] == (entry["confidence"] >= sfr_runs["tau"])
        assert entry["low_confidence_voxels"] == int(low.sum())
        assert np.all(conf[low > 0] < C.VOXEL_THRESHOLD)
        again = C.review_from_maps(entry["case"], conf, label)
        assert again.to_json()["flagged_slices"] == entry["flagged_slices"]
        for f in entry["flagged_slices"]:
            assert 0 <= f["index"] < conf.shape[0]
            roi = C.region_of_interest(conf, label)[f["index"]]
            assert roi.any()
            assert f["confidence"] == pytest.approx(float(conf[f["index"]][roi].mean()), abs=1e-5)


def test_sfr_plus_round_uses_trusted_cases_for_sam_and_the_others_for_retraining(sfr_runs):
    run = sfr_runs["plus"]
    st = stages(run)
    # round 0 is the SFR run's: reused, not recomputed
    for name in ("stitch", "finetune-r0", "pseudolabel-r0", "retrain-r0"):
        assert st[name]["reused_from"].startswith(f"runs/{sfr_runs['sfr'].name}/"), name
    rounds = json.loads((run / "rounds.json").read_text())
    r0 = rounds["rounds"][0]
    trusted = r0["trusted"]
    untrusted = sorted(set(CASES[2:4]) - set(trusted))
    if not trusted or not untrusted:
        pytest.skip("the median tau did not split the cases")
    assert st["finetune-r1"]["extra_labeled"] == trusted
    assert st["pseudolabel-r1"]["cases"] == untrusted
    # the V-Net of round 1 learns from every unlabeled case: untrusted ones with the new pseudo-labels,
    # trusted ones with round 0's V-Net labels
    assert sorted(st["retrain-r1"]["unlabeled_cases"]) == untrusted
    assert st["retrain-r1"]["with_labels"] == trusted
    r1 = rounds["rounds"][1]
    assert r1["sam_trained_with_pseudo"] == trusted and r1["retrained_with"] == CASES[2:4]
    for case, row in r1["cases"].items():
        assert row["confidence_change"] == pytest.approx(row["confidence"] - r0["cases"][case]["confidence"], abs=2e-6)
    moved_in = sorted(c for c, row in r1["cases"].items() if row["trusted"] and not row["was_trusted"])
    assert r1["moved_to_trusted"] == moved_in
    # structure size vs the labeled structures, from the saved labels; a drifted round is not published
    from SFRSegmenterLib.manifest import load_project

    project = load_project(sfr_runs["root"])
    labeled = []
    for c in project.by_role("labeled"):
        lab = read_label(project.label_path(c))
        labeled.append(np.count_nonzero(lab.array) * float(np.prod(lab.spacing)))
    for r in (r0, r1):
        folder = run / "stages" / f"confidence-r{r['round']}"
        sizes = []
        for c in r["cases"]:
            lab = read_label(folder / f"{c}.nii.gz")
            sizes.append(np.count_nonzero(lab.array) * float(np.prod(lab.spacing)))
        assert r["structure_ratio"] == pytest.approx(np.median(sizes) / np.median(labeled), rel=1e-4)
    drift = C.structure_drift(r0["structure_ratio"], r1["structure_ratio"])
    assert bool(r1.get("drift")) == drift
    # the published round: round 1 only when it did not drift and is estimated better (round 0 on a tie)
    best = 0 if drift or r1["mean_estimated_dice"] <= r0["mean_estimated_dice"] else 1
    assert rounds["final_round"] == best
    assert [r["published"] for r in rounds["rounds"]] == [best == 0, best == 1]
    assert all(r["why"].startswith("published" if r["published"] else "dropped") for r in rounds["rounds"])
    for r in rounds["rounds"]:
        assert r["mean_estimated_dice"] == pytest.approx(
            statistics.mean(row["estimated_dice"] for row in r["cases"].values()), abs=2e-6)
    # round 1 compares the trusted cases with round 0's SAM (round 1's learned their V-Net labels), the
    # others with round 1's: the confidence stage's case keys name the pseudo-label stage it compared with
    cf1 = json.loads((run / "stages" / "confidence-r1" / "cases.json").read_text())
    for c in CASES[2:4]:
        made_by = "pseudolabel-r0" if c in trusted else "pseudolabel-r1"
        vnet = read_label(run / "stages" / "confidence-r1" / f"{c}.nii.gz").array
        sam = read_label(run / "stages" / made_by / f"{c}.nii.gz").array
        expect = []
        for k in (1, 2):
            a, b = vnet == k, sam == k
            total = int(a.sum() + b.sum())
            expect.append(0.0 if total == 0 else 2 * int((a & b).sum()) / total)
        assert cf1[c]["signals"]["agreement"] == pytest.approx(expect, abs=1e-6), (c, made_by)
    published = json.loads((run / "review.json").read_text())
    shown = {e["case"]: e["estimated_dice"] for e in published["cases"]}
    assert shown == {c: row["estimated_dice"] for c, row in rounds["rounds"][best]["cases"].items()}


def test_a_case_with_a_too_small_structure_is_never_trusted(sfr_runs, sfr, tmp_path):
    root = tmp_path / "proj"
    shutil.copytree(sfr_runs["root"], root)
    # every case above a tiny tau, but the structure must be 1000x the smallest labeled one:
    # nothing is predicted again (the review is re-applied to the saved maps) and no case is trusted
    sfr("run", root, *TINY, "--sfr-plus", "--rounds", "1", "--tau", "0.01", "--min-structure", "1000",
        "--trust", "confidence", "--no-report", check=True)
    run = latest(root)
    review = json.loads((run / "review.json").read_text())["cases"]
    assert review and not any(e["trusted"] for e in review)
    assert all(e["confidence"] >= 0.01 for e in review)
    cases = json.loads((run / "stages" / "confidence-r0" / "cases.json").read_text())
    for name, entry in cases.items():
        label = read_label(run / "stages" / "confidence-r0" / f"{name}.nii.gz").array
        assert entry["foreground_voxels"] == int(np.count_nonzero(label))
        assert "trusted" not in entry  # the cache keeps measurements; trust is decided from them
    # other trust settings change no stage: the confidence stage of the earlier run is reused whole
    assert stages(run)["confidence-r0"]["reused_from"].startswith("runs/")
    rounds = json.loads((run / "rounds.json").read_text())
    assert rounds["rounds"][0]["stopped"] == "no trusted case"
    # the same measurements with the guard off: every case trusted
    from SFRSegmenterLib import sfrplus

    for name, entry in cases.items():
        label = read_label(run / "stages" / "confidence-r0" / f"{name}.nii.gz")
        everything = sfrplus.TrustContext((label.array.size * float(np.prod(label.spacing)) * 2,))
        assert sfrplus.ConfidenceAndSize(0.01, 0.0).trusted(entry, everything)
        assert not sfrplus.ConfidenceAndSize(0.01, 1.0).trusted(entry, everything)


def test_rerun_reuses_what_did_not_change(sfr_runs, sfr, tmp_path, sample_dir):
    root = tmp_path / "proj"
    shutil.copytree(sfr_runs["root"], root)
    # the V-Net settings changed and one more unlabeled case: SAM fine-tuning is reused, only the
    # new case is pseudo-labeled, re-training is redone
    from SFRSegmenterLib.manifest import Case, load_project

    project = load_project(root)
    project.cases.append(Case("hippocampus_011", str(sample_dir / "images" / "hippocampus_011.nii.gz"), None,
                              "unlabeled"))
    project.save()
    sfr("run", root, *TINY[:-2], "--vnet-option", "filters=2", "--no-report", check=True)
    run = latest(root)
    st = stages(run)
    assert st["finetune-r0"].get("reused_from") and st["stitch"].get("reused_from")
    assert st["pseudolabel-r0"]["computed"] == ["hippocampus_011"]
    assert not st["retrain-r0"].get("reused_from")
    assert (run / "pseudo" / "hippocampus_011.nii.gz").exists()
    # (a new label changes the labeled fingerprint in every stage key: everything is redone,
    # which test_run_keys checks without running anything)


def test_bad_options_are_one_line_errors(sfr_runs, sfr):
    root = sfr_runs["root"]
    out = sfr("run", root, "--vnet-option", "nonsense=1", "--backbone", "tiny_test")
    assert out.returncode == 2 and "nonsense" in out.stderr and "Traceback" not in out.stderr
    out = sfr("run", root, "--resume", "--rounds", "2")
    assert out.returncode == 2 and "--resume" in out.stderr
    out = sfr("run", root, "--min-structure", "-1")
    assert out.returncode == 2 and "--min-structure" in out.stderr and "Traceback" not in out.stderr


def test_demo_quick_runs_the_whole_pipeline_and_reports(tmp_path, sfr):
    out = sfr("demo", "--out", tmp_path / "demo", "--quick", check=True)
    report = out.stdout.strip().splitlines()[-1].split("report: ", 1)[1]
    from pathlib import Path

    assert Path(report).exists() and Path(report).stat().st_size > 10000
    run = latest(tmp_path / "demo")
    review = json.loads((run / "review.json").read_text())
    assert len(review["cases"]) == 2
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["sfr_plus"] and cfg["backbone"] == "tiny_test"
    assert "CC-BY-SA" in out.stdout and "CC-BY-SA" in (tmp_path / "demo" / "ATTRIBUTION.md").read_text()


def test_stage_keys_follow_their_inputs(tmp_path, sample_dir):
    """Keys (what decides reuse) change with exactly the inputs each stage depends on."""
    from SFRSegmenterLib.manifest import load_project
    from SFRSegmenterLib.run.cache import make_key
    from SFRSegmenterLib.run.config import RunConfig, finetune_config, stage_settings
    from SFRSegmenterLib.run.pipeline import Pipeline

    root = make_project(tmp_path / "proj", sample_dir)
    cfg = RunConfig(backbone="tiny_test", iterations_sam=3, iterations_vnet=3)

    def keys(project, cfg):
        p = Pipeline(project, tmp_path / "run", cfg)
        return (make_key("finetune", stage_settings(finetune_config(cfg)), project.classes, p.labeled_fingerprint(), []),
                p.labeled_fingerprint())

    base = keys(load_project(root), cfg)
    assert keys(load_project(root), cfg) == base  # deterministic
    assert keys(load_project(root), RunConfig(backbone="tiny_test", iterations_sam=3, iterations_vnet=9,
                                              device="cpu"))[0] == base[0]  # V-Net/device: same SAM
    assert keys(load_project(root), RunConfig(backbone="tiny_test", iterations_sam=4))[0] != base[0]
    project = load_project(root)
    project.case(CASES[2]).role = "labeled"  # one new label
    project.save()
    assert keys(load_project(root), cfg)[0] != base[0]


def test_the_trust_policy_on_cached_measurements_is_the_rule_on_the_maps(sfr_runs):
    """sfrplus' rule on the cached measurements = Eq. 8 and the size guard computed from the saved maps."""
    from SFRSegmenterLib import sfrplus
    from SFRSegmenterLib.manifest import load_project

    run = sfr_runs["sfr"]
    folder = run / "stages" / "confidence-r0"
    entries = json.loads((folder / "cases.json").read_text())
    project = load_project(sfr_runs["root"])
    labeled = []
    for c in project.by_role("labeled"):
        lab = read_label(project.label_path(c))
        labeled.append(np.count_nonzero(lab.array) * float(np.prod(lab.spacing)))
    context = sfrplus.TrustContext(tuple(labeled))
    confs = sorted(e["confidence"] for e in entries.values())
    # thresholds away from every confidence (the cache keeps them rounded to 1e-6)
    between = [(a + b) / 2 for a, b in zip(confs, confs[1:]) if b - a > 1e-5]
    for tau in (confs[0] - 1e-4, *between, 1.0):
        for fraction in (0.0, 0.25, 1.0, 1000.0):
            policy = sfrplus.ConfidenceAndSize(tau, fraction)
            for name, entry in entries.items():
                image = read_image(folder / f"{name}_confidence.nii.gz")
                label = read_label(folder / f"{name}.nii.gz").array
                min_fg = fraction * min(labeled) / float(np.prod(image.spacing))
                expect = (C.case_confidence(image.array) >= tau) and np.count_nonzero(label) >= min_fg
                assert policy.trusted(entry, context) == expect, (name, tau, fraction)


def test_a_trust_rule_is_one_registered_class(sfr_runs):
    from SFRSegmenterLib import sfrplus
    from SFRSegmenterLib.run.config import RunConfig

    class LargestHalf(sfrplus.TrustPolicy):
        name = "test-largest-half"

        @classmethod
        def from_config(cls, cfg):
            return cls()

        def trusted(self, entry, context):
            return entry["structure_mm3"] >= self.median

    entries = json.loads((sfr_runs["sfr"] / "stages" / "confidence-r0" / "cases.json").read_text())
    LargestHalf.median = statistics.median(e["structure_mm3"] for e in entries.values())
    sfrplus.register_policy(LargestHalf)
    try:
        policy = sfrplus.build_policy(RunConfig(), "test-largest-half")
        decided = policy.decide(entries, sfrplus.TrustContext(()))
        assert decided == {c: e["structure_mm3"] >= LargestHalf.median for c, e in entries.items()}
        record = sfrplus.round_record(0, entries, decided, None, [1.0], sorted(entries), [])
        assert record.trusted == sorted(c for c, t in decided.items() if t)
        assert record.to_json()["cases"][next(iter(entries))]["trusted"] == decided[next(iter(entries))]
    finally:
        del sfrplus.TRUST_POLICIES["test-largest-half"]


def test_drift_stop_on_round_records():
    from SFRSegmenterLib import sfrplus

    def rec(r, ratio):
        return sfrplus.RoundRecord(r, [], [], [], [], [], 0.9, {}, structure_ratio=ratio)

    assert sfrplus.drifted(rec(0, 1.06), rec(1, 0.24))  # LA: round 1 shrank every structure
    assert not sfrplus.drifted(rec(0, 2.0), rec(1, 1.0))  # back towards the labeled size
    assert not sfrplus.drifted(rec(0, None), rec(1, 0.1))  # unknown is never drift
    assert sfrplus.why_stop({"a": False, "b": False}) == "no trusted case"
    assert sfrplus.why_stop({"a": True, "b": True}) == "all cases trusted"
    assert sfrplus.why_stop({"a": True, "b": False}) is None
