"""Stage F end to end through the command line, with the tiny TEST-ONLY SAM model."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import run_sfr


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("stagef") / "proj"
    run_sfr("init", root, "--images", sample_dir / "images", "--labels", sample_dir / "labels",
            "--labeled", 2, "--validation", 2, check=True)
    proc = run_sfr("--progress", "json", "finetune", root, "--tiny-test", "--iterations", 4,
                   "--save-every", 2, "--device", "cpu", "--threads", 1)
    assert proc.returncode == 0, proc.stderr
    return root, proc


def test_finetune_writes_trained_parts_and_metadata(tiny_project):
    root, proc = tiny_project
    progress = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
    steps = [e for e in progress if e["event"] == "progress" and e["stage"] == "finetune"]
    assert steps and steps[-1]["step"] == 4 and steps[-1]["total"] == 4
    assert all("loss" in e and "eta_s" in e and "elapsed_s" in e for e in steps)
    assert any(e["event"] == "stage" and e["status"] == "done" for e in progress)
    meta = json.loads((root / "models/sam/sam-model.json").read_text())
    assert meta["backbone"] == "tiny_test" and meta["iterations_done"] == 4
    assert len(meta["loss_curve"]) == 4 and meta["classes"] == ["background", "class_1", "class_2"]
    assert meta["layout"]["grid"] == [4, 4] and meta["plan"]["canvas"] == 128
    parts_file = root / "models/sam/sam_parts.pt"
    digest = hashlib.sha256(parts_file.read_bytes()).hexdigest()
    assert meta["parts_sha256"] == digest and meta["model_id"].startswith("sam-")
    parts = torch.load(parts_file, weights_only=True)
    assert parts and all(
        ".lora_" in k or k.startswith(("mask_decoder.", "prompt_encoder.")) for k in parts
    ), "only the trained parts are saved"
    assert sum(".lora_" in k for k in parts) == 4 * meta["lora_blocks"]
    assert parts["mask_decoder.mask_tokens.weight"].shape[0] == 3  # background + 2 classes


def test_pseudolabel_files_have_image_geometry(tiny_project):
    root, _ = tiny_project
    proc = run_sfr("pseudolabel", root, "--device", "cpu", "--threads", 1)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((root / "sfr-project.json").read_text())
    unlabeled = [c for c in manifest["cases"] if c["role"] == "unlabeled"]
    others = [c for c in manifest["cases"] if c["role"] != "unlabeled"]
    index = json.loads((root / "pseudo/pseudo-labels.json").read_text())
    meta = json.loads((root / "models/sam/sam-model.json").read_text())
    assert index["model_id"] == meta["model_id"] and index["project"] == manifest["name"]
    assert set(index["cases"]) == {c["name"] for c in unlabeled}
    for c in others:
        assert not (root / "pseudo" / f"{c['name']}.nii.gz").exists()
    for c in unlabeled:
        img_path = root / c["image"] if not c["image"].startswith("/") else c["image"]
        image = sitk.ReadImage(str(img_path))
        lab = sitk.ReadImage(str(root / "pseudo" / f"{c['name']}.nii.gz"))
        conf = sitk.ReadImage(str(root / "pseudo" / f"{c['name']}_confidence.nii.gz"))
        for out in (lab, conf):
            assert out.GetSize() == image.GetSize()
            assert np.allclose(out.GetSpacing(), image.GetSpacing())
            assert np.allclose(out.GetOrigin(), image.GetOrigin())
            assert np.allclose(out.GetDirection(), image.GetDirection())
        la = sitk.GetArrayFromImage(lab)
        ca = sitk.GetArrayFromImage(conf)
        assert la.dtype == np.uint8 and la.max() <= 2
        assert ca.dtype == np.float32 and ca.min() >= 1 / 3 - 1e-5 and ca.max() <= 1.0
        rec = index["cases"][c["name"]]
        assert rec["image_sha256"] == hashlib.sha256(open(img_path, "rb").read()).hexdigest()
        assert abs(rec["mean_confidence"] - float(ca.mean())) < 1e-4


def _one_error_line(capsys, *argv, env=None, monkeypatch=None):
    """Run the CLI in-process (same code path as ``sfr``); expect exit 2 and one stderr line."""
    from SFRSegmenterLib import cli

    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith("warning")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def api_project(tmp_path_factory, sample_dir):
    from SFRSegmenterLib.manifest import init_project

    root = tmp_path_factory.mktemp("stagef-err") / "proj"
    init_project(root, sample_dir / "images", sample_dir / "labels", labeled=1, validation=2)
    return root


def test_pseudolabel_without_model_is_a_clear_error(capsys, api_project):
    line = _one_error_line(capsys, "pseudolabel", api_project, "--device", "cpu")
    assert "sfr finetune" in line and "models/sam" in line


def test_corrupted_checkpoint(tmp_path, capsys, api_project):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint" * 10)
    line = _one_error_line(capsys, "finetune", api_project, "--backbone", "vit_b", "--checkpoint", bad,
                           "--iterations", 1, "--device", "cpu", "--out", tmp_path / "m")
    assert str(bad) in line and "cannot read checkpoint" in line


def test_truncated_official_checkpoint_fails_sha256(tmp_path, capsys, api_project):
    bad = tmp_path / "sam_vit_b_01ec64.pth"
    bad.write_bytes(b"\0" * 1000)
    line = _one_error_line(capsys, "finetune", api_project, "--backbone", "vit_b", "--checkpoint", bad,
                           "--iterations", 1, "--device", "cpu", "--out", tmp_path / "m")
    assert "sha256" in line and "sam_vit_b_01ec64.pth" in line


def test_checkpoint_with_python_objects_is_refused(tmp_path, capsys, api_project):
    bad = tmp_path / "pickled.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "args": __import__("argparse").Namespace(a=1)}, bad)
    line = _one_error_line(capsys, "finetune", api_project, "--backbone", "vit_b", "--checkpoint", bad,
                           "--iterations", 1, "--device", "cpu", "--out", tmp_path / "m")
    assert "refusing" in line


def test_mismatched_checkpoint_lists_keys(tmp_path, capsys, api_project):
    from SFRSegmenterLib.sam.backbones import build_tiny_test

    wrong = tmp_path / "not_lite.pth"
    torch.save(build_tiny_test().state_dict(), wrong)  # a SAM, but not LiteMedSAM's TinyViT
    line = _one_error_line(capsys, "finetune", api_project, "--backbone", "lite_medsam", "--checkpoint", wrong,
                           "--iterations", 1, "--device", "cpu", "--out", tmp_path / "m")
    assert "does not fit the lite_medsam backbone" in line
    assert "missing" in line and "unexpected" in line and "image_encoder." in line


def test_missing_vit_checkpoint_says_where_to_put_it(tmp_path, capsys, api_project, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SFR_CACHE", str(cache))
    line = _one_error_line(capsys, "finetune", api_project, "--backbone", "vit_b", "--iterations", 1,
                           "--device", "cpu")
    assert str(cache / "sam_vit_b_01ec64.pth") in line and "--download" in line
    assert "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912" in line


def test_project_without_labeled_case(tmp_path, capsys, sample_dir):
    from SFRSegmenterLib.manifest import init_project

    root = tmp_path / "p"
    init_project(root, sample_dir / "images")
    line = _one_error_line(capsys, "finetune", root, "--tiny-test", "--iterations", 1, "--device", "cpu")
    assert "no labeled case" in line


def test_tiny_test_conflicts_with_other_backbone(capsys, api_project):
    line = _one_error_line(capsys, "finetune", api_project, "--tiny-test", "--backbone", "vit_b")
    assert "--tiny-test" in line
