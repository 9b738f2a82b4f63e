"""Bad input a new user gave in the audit of 2026-12-03, through the real command line: one line
naming the file or option, exit 2, nothing of the user's written or changed."""

from __future__ import annotations

import hashlib

from conftest import copy_samples


def _one_line_exit_2(proc, *words):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert all(w in lines[0] for w in words), lines[0]


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_predict_out_onto_a_file_is_refused_not_a_traceback(sfr, tiny_run_copy, tmp_path):
    root, run = tiny_run_copy(tmp_path / "p")
    images, _ = copy_samples(tmp_path / "loose", ["hippocampus_001"])  # a user's scan outside the project
    scan = images / "hippocampus_001.nii.gz"
    before = _digest(scan)
    for command in ("predict", "review"):
        proc = sfr(command, "--model", run / "vnet", "--images", scan, "--out", scan)
        _one_line_exit_2(proc, "--out", "folder")
    assert _digest(scan) == before


def test_predict_on_a_missing_image_leaves_no_output_folder(sfr, tiny_run_copy, tmp_path):
    root, run = tiny_run_copy(tmp_path / "p")
    for command in ("predict", "review"):
        out = tmp_path / f"out-{command}"
        proc = sfr(command, "--model", run / "vnet", "--images", tmp_path / "nothere.nii.gz", "--out", out)
        _one_line_exit_2(proc, "nothere.nii.gz", "not found")
        assert not out.exists()


def test_an_unknown_option_is_named_with_its_subcommand(sfr, tmp_path):
    proc = sfr("run", tmp_path / "proj", "--bogus")
    _one_line_exit_2(proc, "sfr run: error:", "--bogus", "sfr run --help")
    proc = sfr("--bogus")
    _one_line_exit_2(proc, "sfr: error:", "--bogus")


def test_init_with_a_class_named_twice_writes_nothing(sfr, tmp_path):
    images, labels = copy_samples(tmp_path / "data", ["hippocampus_001", "hippocampus_003"])
    for spec, words in (("a,a,b", ("--classes", "a")), ("background,,a", ("--classes", "empty"))):
        proc = sfr("init", tmp_path / "proj", "--images", images, "--labels", labels, "--classes", spec)
        _one_line_exit_2(proc, *words)
        assert not (tmp_path / "proj").exists()


def test_warm_start_with_an_empty_run_id_is_not_a_full_run(sfr, tiny_run_copy, tmp_path):
    root, _ = tiny_run_copy(tmp_path / "p")
    runs = sorted(p.name for p in (root / "runs").iterdir())
    proc = sfr("run", root, "--warm-start", "")
    _one_line_exit_2(proc, "--warm-start", "empty")
    assert sorted(p.name for p in (root / "runs").iterdir()) == runs


def test_demo_checks_its_backbone_before_writing_and_leaves_a_users_project_alone(sfr, tiny_run_copy, tmp_path):
    proc = sfr("demo", "--out", tmp_path / "demo", "--backbone", "nope")
    _one_line_exit_2(proc, "backbone", "nope")
    assert not (tmp_path / "demo").exists()
    root, _ = tiny_run_copy(tmp_path / "mine")  # a user's project (of sample cases, made by sfr init)
    before = {p.relative_to(root): _digest(p) for p in root.rglob("*") if p.is_file()}
    proc = sfr("demo", "--quick", "--out", root)
    _one_line_exit_2(proc, "sfr demo", "did not make")
    assert {p.relative_to(root): _digest(p) for p in root.rglob("*") if p.is_file()} == before


def test_progress_json_prints_only_json_lines(sfr, tiny_run_copy, tmp_path):
    import json

    root, run = tiny_run_copy(tmp_path / "p")
    images, _ = copy_samples(tmp_path / "loose", ["hippocampus_001"])
    proc = sfr("--progress", "json", "predict", "--model", run / "vnet", "--images", images / "hippocampus_001.nii.gz",
               "--out", tmp_path / "pred")
    assert proc.returncode == 0, proc.stderr[-1500:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert lines and all(isinstance(json.loads(ln), dict) for ln in lines), proc.stdout[-800:]
