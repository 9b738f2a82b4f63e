"""Engine safety (issue 15), the remaining gaps: every output path built from a case name is checked
to lie inside its folder (io.inside) before writing; label values above int16, folders and looping
links named like volumes, and library warnings on stderr are covered by one-line tests.

Real files, real models from a real tiny run, real ``sfr`` subprocesses for the command-line contract.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SAMPLE, copy_samples, run_sfr
from test_safety import CASES, assert_one_line, digest_tree, make_project

BAD = "../x"  # a case name that slipped past manifest validation (the library called directly)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, safety_run_copy):
    return safety_run_copy(tmp_path_factory.mktemp("outputs") / "proj")


def _project_with_bad_case(root: Path, role="unlabeled", first=True):
    from SFRSegmenterLib.manifest import Case, load_project

    project = load_project(root)
    src = project.case(CASES[2])
    bad = Case(BAD, str(project.image_path(src)), str(project.label_path(src)) if role == "validation" else None, role)
    project.cases.insert(0 if first else len(project.cases), bad)
    return project


def _refused(excinfo, folder: Path, name: str):
    text = str(excinfo.value)
    assert text.startswith(str(folder / name)), text  # names the file
    assert "outside its folder" in text


def test_pseudolabel_output_names_stay_inside_out_dir(finished, tmp_path):
    from SFRSegmenterLib.errors import SFRError
    from SFRSegmenterLib.pseudolabel import pseudolabel

    root, run = finished
    project = _project_with_bad_case(root)
    out = tmp_path / "box" / "out"
    with pytest.raises(SFRError) as exc:
        pseudolabel(project, model_dir=run / "stages" / "finetune-r0", out_dir=out, cases=[BAD], device="cpu")
    _refused(exc, out, BAD + ".nii.gz")
    assert digest_tree(tmp_path) == {}  # nothing written, inside or outside


def test_review_case_maps_stay_inside_out_dir(tmp_path):
    from SFRSegmenterLib import confidence
    from SFRSegmenterLib.errors import SFRError
    from SFRSegmenterLib.io import read_image
    from SFRSegmenterLib.review import write_case_maps

    image = read_image(SAMPLE / "images" / f"{CASES[0]}.nii.gz")
    fg = np.random.default_rng(0).random(image.shape, dtype=np.float32)
    review = confidence.review_case(BAD, np.stack([1 - fg, fg]))
    out = tmp_path / "box" / "out"
    with pytest.raises(SFRError) as exc:
        write_case_maps(review, image, out)
    _refused(exc, out, BAD + ".nii.gz")
    assert digest_tree(tmp_path) == {}


def test_predict_and_review_output_names_stay_inside_out_dir(tmp_path):
    from SFRSegmenterLib.errors import SFRError
    from SFRSegmenterLib.retrain.inference import refuse_overwriting_inputs

    out = tmp_path / "out"
    with pytest.raises(SFRError) as exc:  # the check predict_folder and review_folder make before any work
        refuse_overwriting_inputs(out, [BAD], (".nii.gz", "_confidence.nii.gz"), [])
    _refused(exc, out, BAD + ".nii.gz")


def _pipeline(project, run_path: Path):
    from SFRSegmenterLib.run import config, pipeline

    cfg = config.RunConfig(backbone="tiny_test", device="cpu", iterations_sam=2, iterations_vnet=2)
    return pipeline.Pipeline(project, run_path, cfg)


def test_pipeline_confidence_stage_outputs_stay_inside_the_stage(finished, tmp_path):
    from SFRSegmenterLib.errors import SFRError

    root, run = finished
    project = _project_with_bad_case(root)
    pipe = _pipeline(project, tmp_path / "run")
    pipe.runner.records.update({"retrain-r0": {"key": "the finished run's V-Net"},
                                "pseudolabel-r0": {"key": "the finished run's SAM labels"}})
    sam = run / "stages" / "pseudolabel-r0"  # SAM's label each case is compared with
    sam_labels = {c.name: sam / f"{CASES[2] if c.name == BAD else c.name}.nii.gz" for c in project.by_role("unlabeled")}
    with pytest.raises(SFRError) as exc:
        pipe.stage_confidence(0, run / "stages" / "retrain-r0", sam_labels)
    _refused(exc, tmp_path / "run" / "stages" / "confidence-r0", BAD + "_lowconf.nii.gz")
    assert not list((tmp_path / "run" / "stages").glob("*.nii.gz"))


def test_pipeline_metrics_validation_outputs_stay_inside(finished, tmp_path):
    from SFRSegmenterLib.errors import SFRError

    root, run = finished
    pipe = _pipeline(_project_with_bad_case(root, role="validation"), tmp_path / "run")
    work = tmp_path / "metrics"
    with pytest.raises(SFRError) as exc:
        pipe._metrics(run / "stages" / "confidence-r0", run / "stages" / "retrain-r0", work)
    _refused(exc, work / "validation", BAD + ".nii.gz")
    assert not list(tmp_path.rglob("*.nii.gz"))


def test_pipeline_finalize_refuses_a_case_name_read_from_a_stage_file(finished, tmp_path):
    """finalize publishes the cases listed in the confidence stage's cases.json (a file on disk)."""
    from SFRSegmenterLib.errors import SFRError

    root, run = finished
    pipe = _pipeline(_project_with_bad_case(root, first=False), tmp_path / "run")
    cf = tmp_path / "run" / "stages" / "confidence-r0"
    shutil.copytree(run / "stages" / "confidence-r0", cf)
    cases = json.loads((cf / "cases.json").read_text())
    cases[BAD] = cases[CASES[2]]
    (cf / "cases.json").write_text(json.dumps(cases))
    for suffix in (".nii.gz", "_confidence.nii.gz", "_lowconf.nii.gz"):  # what cf / "../x..." points at
        shutil.copy(cf / f"{CASES[2]}{suffix}", cf / f"{BAD}{suffix}")
    pipe.runner.records.update({"confidence-r0": {"key": "c"}, "retrain-r0": {"key": "r"}})
    before = set(p.name for p in (tmp_path / "run").iterdir())
    with pytest.raises(SFRError) as exc:
        pipe.finalize(cf, run / "stages" / "retrain-r0", [], 0)
    _refused(exc, tmp_path / "run" / "pseudo", BAD + ".nii.gz")
    assert not [n for n in set(p.name for p in (tmp_path / "run").iterdir()) - before if n.endswith(".nii.gz")]


# --------------------------------------------------------------------------- bad input classes


def test_label_value_above_int16_is_one_line(tmp_path):
    images, labels = copy_samples(tmp_path / "data", CASES[:2])
    lab = sitk.ReadImage(str(labels / f"{CASES[0]}.nii.gz"))
    arr = sitk.GetArrayFromImage(lab).astype(np.int32)
    arr[arr == 2] = 40000  # would wrap to a negative int16 value
    big = sitk.GetImageFromArray(arr)
    big.CopyInformation(lab)
    sitk.WriteImage(big, str(labels / f"{CASES[0]}.nii.gz"))
    before = digest_tree(tmp_path)
    proc = run_sfr("init", tmp_path / "proj", "--images", images, "--labels", labels)
    assert_one_line(proc, labels / f"{CASES[0]}.nii.gz", "label value 40000 is too large")
    assert not (tmp_path / "proj").exists() and digest_tree(tmp_path) == before


@pytest.mark.parametrize("kind", ["folder", "looping link"])
def test_a_folder_or_looping_link_named_like_a_volume_is_one_line(finished, tmp_path, kind):
    root, run = finished
    images, labels = copy_samples(tmp_path / "data", CASES[:2])
    odd = images / "odd.nii.gz"
    if kind == "folder":
        odd.mkdir()
    else:
        os.symlink(odd.name, odd)  # a link to itself
    before = digest_tree(tmp_path)
    proc = run_sfr("init", tmp_path / "proj", "--images", images, "--labels", labels)
    assert_one_line(proc, odd, f"named like a volume but is a {kind}" if kind == "folder" else "looping link")
    for args in (("predict", "--model", run / "vnet", "--images", images, "--out", tmp_path / "pred", "--device", "cpu"),
                 ("review", "--model", run / "vnet", "--images", images, "--out", tmp_path / "rev", "--device", "cpu"),
                 ("evaluate", "--pred", images, "--gt", labels)):
        proc = run_sfr(*args)  # these scanned the folder and skipped the entry silently
        assert_one_line(proc, odd, "named like a volume")
    assert not (tmp_path / "proj").exists() and digest_tree(tmp_path) == before


def test_library_warnings_never_reach_stderr(tmp_path):
    """timm's FutureWarnings when LiteMedSAM loads: a bad input after the model is built is still
    exactly one stderr line, and a good run prints no warning."""
    root = make_project(tmp_path)
    out = tmp_path / "sam"
    # a frozen encoder: the same model load (and its warnings), without a 30 s LoRA step
    common = ("finetune", root, "--backbone", "lite_medsam", "--device", "cpu", "--lora-rank", "0", "--out", out)
    proc = run_sfr(*common, "--iterations", "1", env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    proc = run_sfr(*common, "--iterations", "2", "--resume", env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert_one_line(proc, out, "cannot resume")
