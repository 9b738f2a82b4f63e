"""The output rule in the writers the first tests of issue 24 did not reach, and the low items'
siblings: each test failed on the code before its fix (real files, real ``sfr`` subprocesses).

* ``sfr finetune --out`` moved a user's ``sam_parts.pt`` aside to ``sam_parts.pt.prev`` (over a
  user's file of that name) and then deleted it: both files lost, exit 0.
* ``sfr retrain --out`` refused a user's ``model.pt`` only after all training (a 100 MB
  checkpoint written beside it).
* ``sfr predict`` / ``review`` of an image whose case name is too long for its output names wrote
  the label, then failed on the confidence map naming a temporary file, and left it behind.
* ``sfr run --warm-start`` refused the runs of a moved project ("belongs to another project").
"""

from __future__ import annotations

import shutil

from conftest import SAMPLE, run_sfr
from test_safety import CASES, TINY, assert_one_line, digest_tree, make_project


def _tree(folder):
    return sorted(p.name for p in folder.iterdir())


def test_finetune_out_never_moves_or_deletes_a_file_sfr_did_not_write(tmp_path):
    root = make_project(tmp_path)
    args = ["--tiny-test", "--iterations", "2", "--device", "cpu"]
    for names in (("sam_parts.pt", "sam_parts.pt.prev"), ("train_state.pt.prev",)):
        out = tmp_path / f"out-{len(names)}"
        out.mkdir()
        for name in names:
            (out / name).write_bytes(b"the user's own " + name.encode())
        before = digest_tree(out)
        proc = run_sfr("finetune", root, "--out", out, *args)
        assert_one_line(proc, out / names[0], "was not written by sfr", "--overwrite")
        assert digest_tree(out) == before  # before the fix: both files gone, exit 0
        assert _tree(out) == sorted(names)  # refused before any work: nothing written
    # sfr's own folder: saved again and again (its *.prev files are its own)
    mine = tmp_path / "mine"
    for extra in ((), ("--save-every", "1")):
        proc = run_sfr("finetune", root, "--out", mine, *args, *extra)
        assert proc.returncode == 0, proc.stderr
    assert "sam_parts.pt.prev" not in _tree(mine)


def test_retrain_out_refuses_a_file_sfr_did_not_write_before_training(tmp_path):
    root = make_project(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.pt").write_bytes(b"the user's own model")
    proc = run_sfr("retrain", root, "--out", out, "--no-sam", "--iterations", "2", "--device", "cpu")
    assert_one_line(proc, out / "model.pt", "was not written by sfr")
    assert _tree(out) == ["model.pt"]  # before the fix: checkpoint.pt (trained) beside it
    assert (out / "model.pt").read_bytes() == b"the user's own model"


def test_predict_refuses_a_case_name_too_long_for_its_outputs_before_any_work(tmp_path):
    root = make_project(tmp_path)
    assert run_sfr("run", root, *TINY).returncode == 0
    run = root / "runs" / (root / "runs" / "latest").read_text().strip()
    images = tmp_path / "long"
    images.mkdir()
    name = "a" * 240  # a legal file name (247 bytes); NAME_confidence.nii.gz (258 bytes) is not
    image = images / f"{name}.nii.gz"
    shutil.copy(SAMPLE / "images" / f"{CASES[0]}.nii.gz", image)
    for command in ("predict", "review"):
        out = tmp_path / command
        proc = run_sfr(command, "--model", run / "vnet", "--images", images, "--out", out, "--device", "cpu")
        assert_one_line(proc, image, "bytes")
        assert not out.exists() or not list(out.iterdir())  # before the fix: a label and a stray .tmp file


def test_a_moved_project_warm_starts_from_its_runs(tmp_path, safety_run_copy):
    root, _ = safety_run_copy(tmp_path / "proj")  # a project with a finished run, made elsewhere
    moved = tmp_path / "moved"
    root.rename(moved)
    proc = run_sfr("run", moved, "--warm-start", *TINY)
    assert proc.returncode == 0, proc.stderr  # before the fix: "belongs to another project", exit 2
    # a run copied into another project with other cases is still refused
    other = make_project(tmp_path / "b")
    manifest = (other / "sfr-project.json").read_text()
    (other / "sfr-project.json").write_text(manifest.replace(CASES[2], "hippocampus_099"))
    for folder in ("images", "labels"):
        shutil.copy(other / folder / f"{CASES[2]}.nii.gz", other / folder / "hippocampus_099.nii.gz")
    (other / "runs").mkdir()
    source = moved / "runs" / (moved / "runs" / "latest").read_text().strip()
    shutil.copytree(source, other / "runs" / source.name)
    proc = run_sfr("run", other, "--warm-start", source.name, *TINY)
    assert_one_line(proc, "another project")
