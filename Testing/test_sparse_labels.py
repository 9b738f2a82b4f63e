"""Sparse labels: 255 = not annotated, through init, info, both losses, the crops and a real training run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from SFRSegmenterLib.run.budget import FAST
from SFRSegmenterLib.io import read_image, read_label, write_volume
from SFRSegmenterLib.manifest import init_project
from SFRSegmenterLib.retrain import RetrainConfig, load_model, predict_volume, retrain
from SFRSegmenterLib.retrain.data import crop_and_augment
from SFRSegmenterLib.retrain.ssl import seg_loss
from SFRSegmenterLib.sam.augment import random_crop
from SFRSegmenterLib.sam.loss import dice_ce_loss
from SFRSegmenterLib.sparse import NOT_ANNOTATED, annotated_slice_indices, annotated_slices, crop_starts


def sparse_copy(src, dst, keep) -> np.ndarray:
    """``src``'s label with every axial slice but ``keep`` set to 255, written to ``dst``."""
    lab = read_label(src)
    arr = np.full_like(lab.array, NOT_ANNOTATED)
    arr[list(keep)] = lab.array[list(keep)]
    write_volume(lab.with_array(arr), dst)
    return arr


def sparse_labels(tmp_path, sample_dir, names, every=6) -> tuple:
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for n in names:
        (images / f"{n}.nii.gz").symlink_to(sample_dir / "images" / f"{n}.nii.gz")
    for i, n in enumerate(names):
        src = sample_dir / "labels" / f"{n}.nii.gz"
        if i < 2:  # the two labeled cases: a few slices through the structure
            fg = np.flatnonzero((read_label(src).array > 0).reshape(read_label(src).array.shape[0], -1).any(1))
            sparse_copy(src, labels / f"{n}.nii.gz", fg[::every])
        else:
            (labels / f"{n}.nii.gz").symlink_to(src)
    return images, labels


# --------------------------------------------------------------------------- the losses


@pytest.mark.parametrize("loss", [dice_ce_loss, seg_loss], ids=["stage F", "stage R"])
def test_not_annotated_voxels_contribute_nothing(loss):
    torch.manual_seed(0)
    shape = (2, 3, 6, 8) if loss is dice_ce_loss else (2, 3, 4, 6, 8)
    target = torch.randint(0, 3, (shape[0], *shape[2:]))
    target[:, 1] = NOT_ANNOTATED  # one slice of each sample not annotated
    logits = torch.randn(shape, requires_grad=True)
    value = loss(logits, target)
    value.backward()
    grad = logits.grad
    assert grad[:, :, 1].abs().max() == 0, "a not-annotated voxel got a gradient"
    assert grad[:, :, 0].abs().max() > 0, "annotated voxels got no gradient"
    other = logits.detach().clone()
    other[:, :, 1] = torch.randn_like(other[:, :, 1]) * 50  # whatever is predicted there
    assert torch.allclose(loss(other, target), value.detach())


def test_dense_target_loss_unchanged():
    torch.manual_seed(1)
    logits, target = torch.randn(2, 3, 4, 6, 8), torch.randint(0, 3, (2, 4, 6, 8))
    from SFRSegmenterLib.losses import dice_ce

    assert torch.equal(seg_loss(logits, target),
                       dice_ce(logits, target, batch_dice=False, include_background=False, smooth=1.0))


# --------------------------------------------------------------------------- crops


def test_crops_hold_annotation_and_dense_crops_do_not_change():
    label = np.full((40, 30, 30), NOT_ANNOTATED, np.uint8)
    label[[3, 31]] = 1  # two annotated slices far apart
    for seed in range(60):
        starts = crop_starts(label, (8, 16, 16), np.random.default_rng(seed))
        assert any(starts[0] <= k < starts[0] + 8 for k in (3, 31)), starts
        img, lab = random_crop(np.zeros(label.shape, np.float32), label, (8, 16, 16), np.random.default_rng(seed))
        assert (lab != NOT_ANNOTATED).any()
        _, lab3 = crop_and_augment([np.zeros(label.shape, np.float32), label], (8, 16, 16),
                                   np.random.default_rng(seed))
        assert (lab3 != NOT_ANNOTATED).any()
    dense = np.zeros((40, 30, 30), np.uint8)
    for seed in range(5):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        assert crop_starts(dense, (8, 16, 16), a) == [int(b.integers(0, s - c + 1)) for s, c in zip(dense.shape, (8, 16, 16))]


# --------------------------------------------------------------------------- init / info through the CLI


def test_init_and_info_with_sparse_labels(tmp_path, sample_dir, sample_cases, sfr):
    images, labels = sparse_labels(tmp_path, sample_dir, sample_cases[:4])
    proc = sfr("init", tmp_path / "p", "--images", images, "--labels", labels, "--labeled", "2")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "p" / "sfr-project.json").read_text())
    assert manifest["classes"] == ["background", "class_1", "class_2"]
    info = json.loads(sfr("info", tmp_path / "p", "--json", check=True).stdout)
    by_name = {c["name"]: c for c in info["case_list"]}
    for n in sample_cases[:2]:
        arr = read_label(labels / f"{n}.nii.gz").array
        assert by_name[n]["annotated_slices"] == annotated_slices(arr) == len(annotated_slice_indices(arr))
        assert 2 <= by_name[n]["annotated_slices"] < by_name[n]["slices"]
    assert "annotated_slices" not in by_name[sample_cases[3]]
    text = sfr("info", tmp_path / "p", check=True).stdout
    assert f"annotated_slices {by_name[sample_cases[0]]['annotated_slices']}/" in text


@pytest.mark.parametrize("declared", [False, True])
def test_init_refuses_a_stray_value(tmp_path, sample_dir, sample_cases, sfr, declared):
    images, labels = sparse_labels(tmp_path, sample_dir, sample_cases[:3])
    bad = labels / f"{sample_cases[1]}.nii.gz"
    lab = read_label(bad)
    arr = lab.array.copy()
    arr[arr == 2] = 200
    bad.unlink()
    write_volume(lab.with_array(arr), bad)
    extra = ["--classes", "3"] if declared else []
    proc = sfr("init", tmp_path / "p", "--images", images, "--labels", labels, "--labeled", "2", *extra)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "200" in lines[0], proc.stderr
    assert not (tmp_path / "p" / "sfr-project.json").exists()


def test_init_refuses_a_labeled_case_without_annotated_slice(tmp_path, sample_dir, sample_cases, sfr):
    images, labels = sparse_labels(tmp_path, sample_dir, sample_cases[:3])
    bad = labels / f"{sample_cases[0]}.nii.gz"
    lab = read_label(bad)
    bad.unlink()
    write_volume(lab.with_array(np.full_like(lab.array, NOT_ANNOTATED)), bad)
    proc = sfr("init", tmp_path / "p", "--images", images, "--labels", labels, "--labeled", "2")
    assert proc.returncode == 2 and "no annotated slice" in proc.stderr and str(bad) in proc.stderr
    assert not (tmp_path / "p" / "sfr-project.json").exists()


def test_init_refuses_not_annotated_in_ground_truth(tmp_path, sample_dir, sample_cases, sfr):
    images, labels = sparse_labels(tmp_path, sample_dir, sample_cases[:3])
    proc = sfr("init", tmp_path / "p", "--images", images, "--labels", labels, "--labeled", "1")
    assert proc.returncode == 2 and "only a labeled case" in proc.stderr and sample_cases[1] in proc.stderr


# --------------------------------------------------------------------------- training dynamics


def test_vnet_trained_on_a_few_slices_predicts_every_class(tmp_path, sample_dir, sample_cases, one_torch_thread):
    images, labels = sparse_labels(tmp_path, sample_dir, sample_cases[:6], every=6)
    done = [annotated_slices(read_label(labels / f"{n}.nii.gz").array) for n in sample_cases[:2]]
    assert max(done) <= 6, done  # about a fifth of the slices of each labeled case
    project = init_project(tmp_path / "p", images, labels, labeled=2)
    cfg = RetrainConfig(ssl="supervised", use_sam=False, iterations=150, device="cpu", save_every=1000,
                        **FAST["vnet_options"])  # the CPU budget sfr demo uses
    model = load_model(retrain(project, cfg, pseudo_dir=project.root / "pseudo", out_dir=tmp_path / "vnet"), "cpu")
    for case in project.by_role("unlabeled")[:2]:
        pred = predict_volume(model, read_image(project.image_path(case)).array).argmax(0)
        gt = read_label(project.label_path(case)).array
        assert not (pred == NOT_ANNOTATED).any()
        for k in (1, 2):
            assert (pred == k).any(), f"class {k} predicted nowhere in {case.name}"
            dice = 2 * np.count_nonzero((pred == k) & (gt == k)) / (np.count_nonzero(pred == k) + np.count_nonzero(gt == k))
            assert dice > 0.2, f"class {k} Dice {dice:.2f} in {case.name}"
