"""The output rule (issue 24, item 1): a command never replaces a file an earlier ``sfr`` command
did not write (unless ``--overwrite``), and never any image or label of a project it can identify,
even one whose scans lie outside the project folder (``sfr init P --images /data/scans``).

The three attacks of the issue, with real files and the real CLI in subprocesses; each failed
(exit 0, the file replaced) on the code before the rule.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import SAMPLE, run_sfr
from test_safety import CASES, TINY, assert_one_line, digest_tree


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """A project P whose scans and labels lie outside it (data/scans, data/labels), with a tiny run."""
    tmp = tmp_path_factory.mktemp("rule")
    scans, labels = tmp / "data" / "scans", tmp / "data" / "labels"
    scans.mkdir(parents=True)
    labels.mkdir(parents=True)
    for name in CASES:
        shutil.copy(SAMPLE / "images" / f"{name}.nii.gz", scans)
        shutil.copy(SAMPLE / "labels" / f"{name}.nii.gz", labels)
    root = tmp / "P"
    run_sfr("init", root, "--images", scans, "--labels", labels, "--labeled", 2, check=True)
    run_sfr("run", root, *TINY, check=True)
    run = root / "runs" / (root / "runs" / "latest").read_text().strip()
    new = tmp / "new"
    new.mkdir()
    shutil.copy(scans / f"{CASES[0]}.nii.gz", new)  # a new scan named like a project scan
    return tmp, root, run, scans, labels, new


def _predict(model, images, out, *extra):
    return run_sfr("predict", "--model", model, "--images", images, "--out", out, "--device", "cpu", *extra)


def test_predict_into_the_scans_of_a_project_kept_outside_it_is_refused(outside):
    tmp, root, run, scans, labels, new = outside
    before = digest_tree(scans)
    proc = _predict(run / "vnet", new, scans)
    assert_one_line(proc, "refusing to overwrite the image of case", scans / f"{CASES[0]}.nii.gz")
    assert digest_tree(scans) == before
    # the model copied away from its project: the scan is still not sfr's file
    model = tmp / "elsewhere" / "vnet"
    shutil.copytree(run / "vnet", model)
    proc = _predict(model, new, scans)
    assert_one_line(proc, "was not written by sfr", "--overwrite")
    assert digest_tree(scans) == before


def test_predict_into_the_labels_of_a_project_kept_outside_it_is_refused_even_with_overwrite(outside):
    tmp, root, run, scans, labels, new = outside
    before = digest_tree(labels)
    for extra in ((), ("--overwrite",)):
        proc = _predict(run / "vnet", scans, labels, *extra)
        assert_one_line(proc, "refusing to overwrite the label of case", labels)
        assert digest_tree(labels) == before
    proc = run_sfr("review", "--model", run / "vnet", "--images", scans, "--out", labels, "--device", "cpu",
                   "--overwrite")
    assert_one_line(proc, "refusing to overwrite the label of case", labels)
    assert digest_tree(labels) == before


def test_a_file_sfr_did_not_write_is_replaced_only_with_overwrite(outside, tmp_path):
    tmp, root, run, scans, labels, new = outside
    loose = tmp_path / "loose"
    loose.mkdir()
    mine = loose / f"{CASES[0]}.nii.gz"
    shutil.copy(SAMPLE / "labels" / f"{CASES[0]}.nii.gz", mine)  # a user's own file, in no project
    before = mine.read_bytes()
    proc = _predict(run / "vnet", new, loose)
    assert_one_line(proc, str(mine), "was not written by sfr", "--overwrite")
    assert mine.read_bytes() == before
    assert sorted(p.name for p in loose.iterdir()) == [mine.name]  # nothing written
    proc = _predict(run / "vnet", new, loose, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert mine.read_bytes() != before
    # evaluate --out, stitch --out: the same rule for a single output file
    report = tmp_path / "scores.json"
    report.write_text("my notes\n")
    proc = run_sfr("evaluate", "--pred", loose, "--gt", labels, "--out", report)
    assert_one_line(proc, str(report), "was not written by sfr")
    assert report.read_text() == "my notes\n"
    png = tmp_path / "mosaic.png"
    png.write_bytes(b"not sfr's")
    proc = run_sfr("stitch", new / f"{CASES[0]}.nii.gz", "--out", png)
    assert_one_line(proc, str(png), "was not written by sfr")
    assert png.read_bytes() == b"not sfr's"


def test_rerunning_predict_into_its_own_output_folder_works_but_a_hand_edit_is_kept(outside, tmp_path):
    tmp, root, run, scans, labels, new = outside
    out = tmp_path / "pred"
    for _ in range(2):
        proc = _predict(run / "vnet", new, out)
        assert proc.returncode == 0, proc.stderr
    for _ in range(2):  # review too, into its own folder
        proc = run_sfr("review", "--model", run / "vnet", "--images", new, "--out", tmp_path / "rev", "--device", "cpu")
        assert proc.returncode == 0, proc.stderr
    label = out / f"{CASES[0]}.nii.gz"
    shutil.copy(SAMPLE / "labels" / f"{CASES[0]}.nii.gz", label)  # the user corrected it by hand
    edited = label.read_bytes()
    proc = _predict(run / "vnet", new, out)
    assert_one_line(proc, str(label), "changed since")
    assert label.read_bytes() == edited
