"""Engine safety, second pass (issue 24, items 4, 7 and the low items), each through real files and
real ``sfr`` subprocesses; each test failed on the code before its fix.
"""

from __future__ import annotations

import json
import shutil

import numpy as np

from conftest import SAMPLE, run_sfr
from test_safety import CASES, assert_one_line

IMAGE = SAMPLE / "images" / f"{CASES[0]}.nii.gz"


def test_a_seg_nrrd_with_overlapping_segments_in_two_layers_is_read(tmp_path):
    import slicerio

    from SFRSegmenterLib.io import read_image, read_label

    image = read_image(IMAGE)
    ijk = np.transpose(image.array, (2, 1, 0))  # slicerio's (i, j, k)
    seg = slicerio.create_segmentation(ijk.shape, image.ijk_to_world())
    a = np.zeros(ijk.shape, bool)
    a[5:20, 5:20, 5:20] = True
    b = np.zeros(ijk.shape, bool)
    b[10:25, 10:25, 10:25] = True  # overlaps a: Slicer puts it in a second layer
    slicerio.add_segment(seg, a, {"name": "anterior"})
    slicerio.add_segment(seg, b, {"name": "posterior"})
    assert seg["voxels"].ndim == 4 and seg["voxels"].shape[0] == 2  # layers first
    path = tmp_path / "overlap.seg.nrrd"
    slicerio.write_segmentation(str(path), seg)
    label = read_label(path, image)
    assert label.shape == image.shape
    assert label.segments == {1: "anterior", 2: "posterior"}
    counts = {int(v): int(n) for v, n in zip(*np.unique(label.array, return_counts=True))}
    assert counts[2] == b.sum() and counts[1] == a.sum() - (a & b).sum()  # the later segment wins
    proc = run_sfr("stitch", IMAGE, "--label", path, "--out", tmp_path / "mosaic.png")
    assert proc.returncode == 0, proc.stderr


def test_a_malformed_lock_is_one_line_and_cleared_once_stale(tmp_path):
    import os
    import socket
    import time

    from test_safety import TINY, make_project

    root = make_project(tmp_path)
    lock = root / "runs" / ".lock"
    lock.parent.mkdir(exist_ok=True)
    for text in ("[1, 2]", json.dumps({"pid": "abc", "host": socket.gethostname(), "run_id": "x"})):
        lock.write_text(text)  # fresh: maybe a run starting
        proc = run_sfr("run", root, *TINY)
        assert_one_line(proc, str(lock), "malformed")
        assert lock.read_text() == text
    old = time.time() - 3600
    os.utime(lock, (old, old))  # an hour old: stale, cleared with a warning, the run goes on
    proc = run_sfr("run", root, *TINY)
    assert proc.returncode == 0, proc.stderr
    assert "malformed stale lock" in proc.stderr and "Traceback" not in proc.stderr
    assert not lock.exists()


def test_a_lock_or_status_with_a_pid_out_of_range_or_of_another_type_is_never_a_traceback(tmp_path):
    """A pid no process can have (2**31, 10**30: os.kill overflows), a string or a list, in the lock
    or in status.json, and a status.json that is not a JSON object: before the fix each was a
    traceback (OverflowError, ValueError, TypeError, AttributeError) on every sfr run/status/cancel."""
    import os
    import socket
    import time

    from test_safety import TINY, make_project

    root = make_project(tmp_path)
    lock = root / "runs" / ".lock"
    lock.parent.mkdir(exist_ok=True)
    for pid in (2 ** 31, 10 ** 30):
        text = json.dumps({"pid": pid, "host": socket.gethostname(), "run_id": "x"})
        lock.write_text(text)
        proc = run_sfr("run", root, *TINY)
        assert_one_line(proc, str(lock), "malformed")
        assert lock.read_text() == text
    old = time.time() - 3600
    os.utime(lock, (old, old))
    proc = run_sfr("run", root, *TINY)
    assert proc.returncode == 0, proc.stderr
    assert "malformed stale lock" in proc.stderr and not lock.exists()
    status = root / "runs" / (root / "runs" / "latest").read_text().strip() / "status.json"
    for pid in (2 ** 31, 10 ** 30, "abc", [1]):  # a run "running" in a process that cannot exist
        status.write_text(json.dumps({"state": "running", "pid": pid, "host": socket.gethostname()}))
        proc = run_sfr("status", root, "--json")
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        assert json.loads(proc.stdout)["state"] == "crashed"
    status.write_text("[1, 2]")
    for command in (("status",), ("cancel",), ("run", "--resume")):
        proc = run_sfr(command[0], root, *command[1:])
        assert_one_line(proc, str(status), "not a JSON object")


def test_an_unlabeled_cases_optional_label_is_checked_before_training(tmp_path):
    from SFRSegmenterLib.manifest import load_project
    from test_safety import TINY, make_project

    root = make_project(tmp_path)
    project = load_project(root)
    case = project.by_role("unlabeled")[0]
    label = project.label_path(case)
    other = next(c for c in CASES if c != case.name)
    shutil.copy(SAMPLE / "labels" / f"{other}.nii.gz", label)  # another case's grid
    proc = run_sfr("run", root, *TINY)
    assert_one_line(proc, str(label), "differs from the size")
    assert not (root / "runs").exists() or not [p for p in (root / "runs").iterdir() if p.is_dir()]


def test_a_moved_project_still_reports_its_runs(tmp_path):
    from test_safety import TINY, make_project

    root = make_project(tmp_path)
    assert run_sfr("run", root, *TINY).returncode == 0
    moved = tmp_path / "renamed"
    root.rename(moved)  # images inside, paths relative: the whole project moved
    proc = run_sfr("report", moved)
    assert proc.returncode == 0, proc.stderr
    run = moved / "runs" / (moved / "runs" / "latest").read_text().strip()
    assert (run / "report.html").is_file()


def test_init_counts_the_case_name_limit_in_bytes(tmp_path):
    from conftest import copy_samples

    images, _ = copy_samples(tmp_path / "data", CASES[:2])
    name = "\u00e9" * 120  # 120 characters, 240 bytes: fine-tuning failed writing its files before
    shutil.copy(images / f"{CASES[0]}.nii.gz", images / f"{name}.nii.gz")
    proc = run_sfr("init", tmp_path / "proj", "--images", images)
    assert_one_line(proc, "240 bytes", "UTF-8")
    assert not (tmp_path / "proj").exists()


def test_a_sam_model_of_another_project_with_other_classes_is_refused(tmp_path):
    from test_safety import TINY, make_project

    a = make_project(tmp_path / "a")
    assert run_sfr("run", a, *TINY).returncode == 0
    model = a / "runs" / (a / "runs" / "latest").read_text().strip() / "stages" / "finetune-r0"
    b = make_project(tmp_path / "b")
    manifest = json.loads((b / "sfr-project.json").read_text())
    manifest["classes"][2] = "tumour"  # same number of classes, another meaning
    (b / "sfr-project.json").write_text(json.dumps(manifest))
    proc = run_sfr("pseudolabel", b, "--model", model, "--out", tmp_path / "pseudo", "--device", "cpu")
    assert_one_line(proc, str(model), "fine-tuned on project", "tumour")
    assert not (tmp_path / "pseudo").exists()
