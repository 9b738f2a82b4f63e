"""Engine safety (issue 15): inputs are sacred, nothing is written outside the project, every bad
input is one line (exit 2, no traceback), a run is validated before its first stage, the lock is
taken first, the report escapes every user string.

Real files and real ``sfr`` subprocesses; each test failed on the code before the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, copy_samples, run_sfr

CASES = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006"]
TINY = ["--backbone", "tiny_test", "--iterations-sam", "2", "--iterations-vnet", "2", "--device", "cpu",
        "--vnet-option", "filters=4", "--no-report"]


def digest_tree(root: Path) -> dict:
    """{relative path: sha256} of every file under ``root`` (what must not change)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_one_line(proc, *needles):
    """The bad-input contract: exit 2, one stderr line naming the file or option, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("warning:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])


def make_project(tmp: Path, labeled=2) -> Path:
    """A project whose images and labels lie inside it (PROJECT/images, PROJECT/labels)."""
    root = tmp / "proj"
    images, labels = copy_samples(root, CASES)
    run_sfr("init", root, "--images", images, "--labels", labels, "--labeled", labeled, check=True)
    return root


@pytest.fixture(scope="module")
def finished(tmp_path_factory, safety_run_copy):
    """A project with a finished tiny run (its SAM model and V-Net are used as real models)."""
    return safety_run_copy(tmp_path_factory.mktemp("safety") / "proj")


# --------------------------------------------------------------------------- inputs are sacred


def test_pseudolabel_into_the_images_folder_is_refused_before_any_work(finished):
    root, run = finished
    before = digest_tree(root / "images")
    proc = run_sfr("pseudolabel", root, "--out", root / "images", "--model", run / "stages" / "finetune-r0",
                   "--device", "cpu")
    assert_one_line(proc, "refusing to overwrite the image of case", root / "images")
    assert digest_tree(root / "images") == before


def test_predict_into_the_labels_folder_is_refused(finished):
    root, run = finished
    before = digest_tree(root / "labels")
    proc = run_sfr("predict", "--model", run / "vnet", "--images", root / "images", "--out", root / "labels",
                   "--device", "cpu")
    assert_one_line(proc, "refusing to overwrite the label of case", root / "labels")
    assert digest_tree(root / "labels") == before


def test_stitch_evaluate_report_never_write_over_an_input(finished, tmp_path):
    root, run = finished
    project_before = digest_tree(root / "images") | digest_tree(root / "labels")
    image = root / "images" / f"{CASES[0]}.nii.gz"
    label = root / "labels" / f"{CASES[0]}.nii.gz"
    # inputs outside any project: the command's own inputs are protected too
    loose = tmp_path / "loose"
    loose_images, loose_labels = copy_samples(loose, CASES[:1])
    loose_image = loose_images / f"{CASES[0]}.nii.gz"
    loose_label = loose_labels / f"{CASES[0]}.nii.gz"
    loose_before = digest_tree(loose)
    checks = [
        (("stitch", image, "--out", image), image),
        (("stitch", loose_image, "--label", loose_label, "--out", loose_label), loose_label),
        (("evaluate", "--pred", run / "pseudo", "--gt", root / "labels", "--json", label), label),
        (("evaluate", "--pred", loose_labels, "--gt", loose_labels, "--json", loose_label), loose_label),
        (("evaluate", "--pred", run / "pseudo", "--gt", root / "labels", "--json", root / "sfr-project.json"),
         "sfr-project.json"),
        (("report", run, "--out", label), label),
        (("report", run, "--out", run / "review.json"), "review.json"),
        (("report", root, "--out", root / "runs" / "latest"), "latest"),
    ]
    manifest = (root / "sfr-project.json").read_bytes()
    review = (run / "review.json").read_bytes()
    for args, named in checks:
        proc = run_sfr(*args)
        assert_one_line(proc, "refusing to overwrite", named)
        assert proc.stdout == "", args  # refused before the work (evaluate printed its table first)
    assert digest_tree(root / "images") | digest_tree(root / "labels") == project_before
    assert digest_tree(loose) == loose_before
    assert (root / "sfr-project.json").read_bytes() == manifest
    assert (run / "review.json").read_bytes() == review
    assert not list(root.rglob(".tmp-*"))


def test_guard_is_one_function_every_writer_calls(tmp_path):
    """write_volume, atomic_path and write_json_atomic all refuse a protected file."""
    from SFRSegmenterLib.errors import SFRError
    from SFRSegmenterLib.io import Volume, atomic_path, protecting, write_volume
    from SFRSegmenterLib.manifest import write_json_atomic

    target = tmp_path / "input.nii.gz"
    target.write_bytes(b"original")
    with protecting([target], "an input"):
        for write in (lambda: write_volume(Volume(np.zeros((2, 2, 2), np.uint8)), target),
                      lambda: write_json_atomic(target, {}),
                      lambda: atomic_path(target).__enter__()):
            with pytest.raises(SFRError, match="refusing to overwrite an input"):
                write()
    assert target.read_bytes() == b"original"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.nii.gz"]


# --------------------------------------------------------------------------- case names, manifest


def _manifest(root: Path) -> dict:
    return json.loads((root / "sfr-project.json").read_text())


def _save(root: Path, data) -> None:
    (root / "sfr-project.json").write_text(json.dumps(data))


@pytest.mark.parametrize("name, problem", [
    ("../../../../images/hippocampus_003", "path separator"),
    ("/tmp/elsewhere/case", "path separator"),
    ("..", "not a file name"),
    ("bad\nname", "control character"),
    ("", "non-empty"),
])
def test_unsafe_case_names_are_refused_when_a_manifest_is_loaded(tmp_path, name, problem):
    root = make_project(tmp_path)
    data = _manifest(root)
    data["cases"][3]["name"] = name
    _save(root, data)
    before = digest_tree(tmp_path)
    for args in (("info", root), ("run", root, *TINY)):
        proc = run_sfr(*args)
        assert_one_line(proc, root / "sfr-project.json", "cases[3].name", problem)
    assert digest_tree(tmp_path) == before
    assert not (root / "runs").exists()


def test_init_refuses_a_file_name_that_is_not_a_safe_case_name(tmp_path):
    images, labels = copy_samples(tmp_path / "data", CASES[:2])
    shutil.copy(images / f"{CASES[0]}.nii.gz", images / "bad\tname.nii.gz")
    proc = run_sfr("init", tmp_path / "proj", "--images", images)
    assert_one_line(proc, "control character")
    assert not (tmp_path / "proj").exists()


def test_output_names_must_stay_inside_their_folder(tmp_path):
    from SFRSegmenterLib.errors import SFRError
    from SFRSegmenterLib.io import inside

    assert inside(tmp_path, "case.nii.gz") == tmp_path / "case.nii.gz"
    for name in ("../x.nii.gz", "/etc/x.nii.gz", "a/../../x", ".."):
        with pytest.raises(SFRError, match="outside its folder|not a file name"):
            inside(tmp_path, name)


@pytest.mark.parametrize("edit, field, words", [
    (lambda d: d.update(schema_version="1"), "schema_version", "must be an integer"),
    (lambda d: d.update(schema_version=2), "schema_version", "newer than this engine supports (1)"),
    (lambda d: d.update(classes="background"), "classes", "list"),
    (lambda d: d.update(classes=["background", 3]), "classes[1]", "string"),
    (lambda d: d.update(cases={"a": 1}), "cases", "must be a list"),
    (lambda d: d["cases"][0].update(label=None), "cases[0] ('hippocampus_001').label", "needs a label"),
    (lambda d: d["cases"][1].update(image=7), "cases[1] ('hippocampus_003').image", "file path"),
    (lambda d: d["cases"][2].update(role="teacher"), "cases[2] ('hippocampus_004').role", "unknown role"),
    (lambda d: d["cases"][2].update(name="hippocampus_001"), "cases[2] ('hippocampus_001').name", "duplicate"),
    (lambda d: d.update(name=["x"]), "name", "string"),
])
def test_manifest_is_validated_as_a_whole(tmp_path, edit, field, words):
    root = make_project(tmp_path)
    data = _manifest(root)
    edit(data)
    _save(root, data)
    proc = run_sfr("info", root)
    assert_one_line(proc, root / "sfr-project.json", field, words)
    assert "1 is newer than 1" not in proc.stderr


# --------------------------------------------------------------------------- one line for each failure


def test_each_failure_class_is_one_line_and_writes_nothing(tmp_path):
    root = make_project(tmp_path)
    label0 = root / "labels" / f"{CASES[0]}.nii.gz"
    image3 = root / "images" / f"{CASES[3]}.nii.gz"

    def attempt(*extra, needles=()):
        before = digest_tree(tmp_path)
        proc = run_sfr("run", root, *TINY, *extra)
        assert_one_line(proc, *needles)
        assert digest_tree(tmp_path) == before
        assert not (root / "runs").exists()

    # option values and ranges, all before anything is created
    attempt("--seed", "-1", needles=["--seed -1"])
    attempt("--vnet-option", "filters=0", needles=["--vnet-option filters=0", ">= 1"])
    attempt("--vnet-option", "filters=abc", needles=["--vnet-option filters", "integer"])
    attempt("--sam-option", "lr=-1", needles=["--sam-option lr=-1", "> 0"])
    attempt("--sam-option", "lora_rank=1.5", needles=["--sam-option lora_rank", "integer"])
    attempt("--pseudo-overlap", "0.95", needles=["--pseudo-overlap 0.95"])
    attempt("--crop", "16", "16", "17", needles=["crop", "multiples of 16"])
    attempt("--crop", "160", "160", "160", needles=["--crop 160 160 160", "larger than every volume", "refused"])
    for args, needle in ((("retrain", root, "--lr", "-1"), "--lr -1"),
                         (("predict", "--model", root, "--images", root / "images", "--out", tmp_path / "o",
                           "--threads", "-1"), "--threads -1"),
                         (("pseudolabel", root, "--overlap", "1.5"), "--overlap 1.5")):
        proc = run_sfr(*args)
        assert_one_line(proc, needle)
    # files: a labeled case's label deleted, empty (all background), an image that is a folder or empty
    saved = label0.read_bytes()
    label0.unlink()
    attempt(needles=[label0, "not found"])
    label0.write_bytes(saved)
    from SFRSegmenterLib.io import read_label, write_volume

    lab = read_label(label0)
    write_volume(lab.with_array(np.zeros_like(lab.array)), root / "labels" / "empty.nii.gz")
    data = _manifest(root)
    good = data["cases"][0]["label"]
    data["cases"][0]["label"] = "labels/empty.nii.gz"
    _save(root, data)
    attempt(needles=["empty.nii.gz", "empty (all background)"])
    data["cases"][0]["label"] = good
    _save(root, data)
    saved = image3.read_bytes()
    image3.unlink()
    image3.mkdir()
    attempt(needles=[image3, "is a folder"])
    image3.rmdir()
    image3.write_bytes(b"")
    attempt(needles=[image3, "empty"])
    image3.write_bytes(saved)


def test_an_all_background_label_is_refused_by_init(tmp_path):
    from SFRSegmenterLib.io import read_label, write_volume

    images, labels = copy_samples(tmp_path / "data", CASES[:2])
    lab = read_label(labels / f"{CASES[0]}.nii.gz")
    write_volume(lab.with_array(np.zeros_like(lab.array)), labels / f"{CASES[0]}.nii.gz")
    proc = run_sfr("init", tmp_path / "proj", "--images", images, "--labels", labels)
    assert_one_line(proc, labels / f"{CASES[0]}.nii.gz", "empty")
    assert not (tmp_path / "proj").exists()


def test_non_orthogonal_direction_is_refused_at_init(tmp_path):
    import SimpleITK as sitk

    images, labels = copy_samples(tmp_path / "data", CASES[:2])
    path = images / f"{CASES[1]}.nii.gz"
    img = sitk.ReadImage(str(path))
    img.SetDirection((1, 0.5, 0, 0, 1, 0, 0, 0, 1))
    nrrd = images / f"{CASES[1]}.nrrd"
    sitk.WriteImage(img, str(nrrd))
    path.unlink()
    (labels / f"{CASES[1]}.nii.gz").unlink()
    proc = run_sfr("init", tmp_path / "proj", "--images", images)
    assert_one_line(proc, nrrd, "not orthonormal")


def test_voxel_budget_is_checked_from_the_header(tmp_path):
    images, _ = copy_samples(tmp_path / "data", CASES[:1])
    proc = run_sfr("stitch", images / f"{CASES[0]}.nii.gz", env={"SFR_MAX_VOXELS": "1000"})
    assert_one_line(proc, f"{CASES[0]}.nii.gz", "budget")


def test_damaged_model_and_training_state_are_one_line(finished, tmp_path):
    root, run = finished
    empty = tmp_path / "model.pt"
    empty.write_bytes(b"")
    proc = run_sfr("predict", "--model", empty, "--images", root / "images", "--out", tmp_path / "out",
                   "--device", "cpu")
    assert_one_line(proc, empty)
    # a SAM fine-tuning folder with a damaged training state: --resume says so in one line
    model = tmp_path / "sam"
    run_sfr("finetune", root, "--tiny-test", "--iterations", "2", "--save-every", "1", "--device", "cpu",
            "--out", model, check=True)
    state = model / "train_state.pt"
    state.write_bytes(b"not a torch file")
    for prev in model.glob("train_state.pt.prev"):
        prev.write_bytes(b"")
    proc = run_sfr("finetune", root, "--tiny-test", "--iterations", "2", "--save-every", "1", "--device", "cpu",
                   "--out", model, "--resume")
    assert_one_line(proc, state, "damaged")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_project_is_one_line(tmp_path):
    root = make_project(tmp_path)
    os.chmod(root, 0o555)
    try:
        proc = run_sfr("run", root, *TINY)
        assert_one_line(proc, "read-only or no permission")
    finally:
        os.chmod(root, 0o755)


# --------------------------------------------------------------------------- lock first


def test_concurrent_starts_leave_exactly_one_run(tmp_path):
    """Three real `sfr run` started at once (a double click and more): one runs, the others are
    refused in one line and leave nothing; runs/latest names the run that ran."""
    root = make_project(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "SFRSegmenterLib", "--progress", "none", "run", str(root), "--backbone",
            "tiny_test", "--iterations-sam", "40", "--iterations-vnet", "2", "--device", "cpu", "--vnet-option",
            "filters=4", "--no-report"]
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]
    ok = [r for r in results if r[0] == 0]
    refused = [r for r in results if r[0] != 0]
    assert len(ok) == 1, results
    for code, _, err in refused:
        assert code == 2 and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1 and ("busy" in err or "starting" in err), err
    runs = [p for p in (root / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    assert (root / "runs" / "latest").read_text().strip() == runs[0].name
    assert json.loads((runs[0] / "status.json").read_text())["state"] == "done"
    assert not (root / "runs" / ".lock").exists()


def test_detached_run_takes_over_the_lock(tmp_path):
    root = make_project(tmp_path)
    proc = run_sfr("run", root, *TINY, "--detach", check=True)
    run_id = proc.stdout.strip().splitlines()[-1]
    lock = root / "runs" / ".lock"
    # the launcher returns only once its child holds the lock (or has already finished)
    if lock.exists():
        assert json.loads(lock.read_text())["run_id"] == run_id
        assert json.loads(lock.read_text())["pid"] != os.getpid()
    second = run_sfr("run", root, *TINY)
    for _ in range(600):
        state = json.loads((root / "runs" / run_id / "status.json").read_text()).get("state")
        if state in ("done", "failed"):
            break
        time.sleep(0.2)
    assert state == "done"
    assert (root / "runs" / "latest").read_text().strip() in (run_id, *[p.name for p in (root / "runs").iterdir()])
    if second.returncode == 2:
        assert "busy" in second.stderr or "starting" in second.stderr
        assert (root / "runs" / "latest").read_text().strip() == run_id


# --------------------------------------------------------------------------- report


def test_report_escapes_case_names_everywhere_and_checks_its_project(tmp_path):
    evil = "<img src=z onerror=alert(1)>"
    root = tmp_path / "proj"
    images, labels = copy_samples(root, CASES)
    # an unlabeled case whose file name is markup
    for folder in (images, labels):
        os.rename(folder / f"{CASES[3]}.nii.gz", folder / f"{evil}.nii.gz")
    run_sfr("init", root, "--images", images, "--labels", labels, "--labeled", "2", check=True)
    run_sfr("run", root, *TINY[:-1], "--sfr-plus", "--rounds", "1", "--tau", "0.0001", "--min-structure", "0",
            check=True)
    run = root / "runs" / (root / "runs" / "latest").read_text().strip()
    page = (run / "report.html").read_text()
    assert evil not in page
    assert "&lt;img src=z onerror=alert(1)&gt;" in page
    config = json.loads((run / "config.json").read_text())
    assert Path(config["project"]).is_absolute() and Path(config["project"]) == root.resolve()
    # from another folder, through a relative path: the same project
    out = run_sfr("report", os.path.relpath(run, tmp_path), "--out", tmp_path / "r.html", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    # a copy of the run in another project with the same folder name is refused
    other = tmp_path / "elsewhere" / "proj"
    (other / "runs").mkdir(parents=True)
    shutil.copy(root / "sfr-project.json", other)
    shutil.copytree(run, other / "runs" / run.name)
    proc = run_sfr("report", other / "runs" / run.name, "--out", tmp_path / "r2.html")
    assert_one_line(proc, "config.json", "belongs to project")
    assert not (tmp_path / "r2.html").exists()


def test_full_disk_names_the_file_and_marks_the_run_failed(tmp_path):
    """RLIMIT_FSIZE makes writes past 48 KiB fail with EFBIG, as a full disk does: the one line
    names the file being written (not 'a file'), and the run reads `failed`, not `crashed`."""
    import resource
    import signal

    root = make_project(tmp_path)

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (48 * 1024, 48 * 1024))

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "SFRSegmenterLib", "run", str(root), *TINY], env=env,
                          capture_output=True, text=True, preexec_fn=small_files, timeout=300)
    assert_one_line(proc, "disk full while writing", str(root / "runs"))
    assert "writing a file" not in proc.stderr
    run = root / "runs" / (root / "runs" / "latest").read_text().strip()
    status = run_sfr("status", root, "--json")
    assert json.loads(status.stdout)["state"] == "failed", status.stdout


@pytest.mark.parametrize("option, message", [
    (("--vnet-option", 'augment="flip"'), "must be one of auto, rotflip, crop"),
    (("--sam-option", "warmup=-1"), "must be >= 0"),
    (("--sam-option", 'preprocess="x"'), "must be one of percentile, zscore, rank"),
    (("--sam-option", "head_lr_scale=0"), "--sam-option head_lr_scale=0"),
])
def test_stage_option_names_and_warm_up_are_checked_before_the_run(tmp_path, sample_dir, option, message):
    root = tmp_path / "p"
    run_sfr("init", root, "--images", sample_dir / "images", "--labels", sample_dir / "labels", "--labeled", 2, check=True)
    proc = run_sfr("run", root, "--backbone", "tiny_test", *option)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert not (root / "runs").exists() or not any((root / "runs").iterdir())
