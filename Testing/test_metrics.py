"""Metrics equal medpy.metric.binary; empty masks are reported, never scored as perfect."""

from __future__ import annotations

import json

import numpy as np
import pytest
from medpy.metric import binary as mb
from scipy.ndimage import binary_dilation, gaussian_filter

from SFRSegmenterLib.io import Volume, read_label, write_volume
from SFRSegmenterLib.metrics import binary_metrics, label_metrics, mean_metrics


def _blob(rng, shape, sigma=3):
    return gaussian_filter(rng.random(shape), sigma) > 0.5


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.7, 0.9), (0.625, 0.625, 0.625)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_to_medpy(spacing, seed):
    rng = np.random.default_rng(seed)
    a, b = _blob(rng, (30, 40, 50)), _blob(rng, (30, 40, 50))
    m = binary_metrics(a, b, spacing)
    ref = {
        "dice": mb.dc(a, b),
        "jaccard": mb.jc(a, b),
        "hd95_mm": mb.hd95(a, b, spacing),
        "asd_mm": mb.asd(a, b, spacing),
        "hd95_vox": mb.hd95(a, b),
        "asd_vox": mb.asd(a, b),
    }
    for key, value in ref.items():
        assert m[key] == pytest.approx(value, abs=1e-6), key


def test_equal_to_medpy_on_real_labels(sample_dir, sample_cases):
    gt = read_label(sample_dir / "labels" / f"{sample_cases[0]}.nii.gz")
    g = gt.array == 1
    p = binary_dilation(g, iterations=1) & ~(gt.array == 2)
    m = binary_metrics(p, g, gt.spacing_zyx)
    assert m["hd95_mm"] == pytest.approx(mb.hd95(p, g, gt.spacing_zyx), abs=1e-6)
    assert m["asd_mm"] == pytest.approx(mb.asd(p, g, gt.spacing_zyx), abs=1e-6)
    # objects touching the volume border are handled as medpy does
    edge = np.zeros_like(g)
    edge[:3] = True
    m = binary_metrics(edge, g, (1, 1, 1))
    assert m["hd95_vox"] == pytest.approx(mb.hd95(edge, g), abs=1e-6)


def test_empty_masks_reported_not_perfect():
    gt = np.zeros((10, 10, 10), bool)
    gt[3:6, 3:6, 3:6] = True
    empty = np.zeros_like(gt)
    m = binary_metrics(empty, gt, (1, 1, 1))
    assert m["dice"] == 0.0 and m["hd95_mm"] is None and m["asd_vox"] is None
    assert m["reason"] == "prediction is empty"
    m = binary_metrics(gt, empty, (1, 1, 1))
    assert m["reason"] == "ground truth is empty" and m["hd95_vox"] is None
    m = binary_metrics(empty, empty, (1, 1, 1))
    assert m["dice"] is None and "both empty" in m["reason"]
    mean = mean_metrics([{"dice": 0.5, "hd95_mm": None}, {"dice": 1.0, "hd95_mm": 2.0}])
    assert mean["dice"] == 0.75 and mean["hd95_mm"] == 2.0 and mean["n_hd95_mm"] == 1


def test_per_class_rows():
    gt = np.zeros((8, 8, 8), np.uint8)
    gt[1:4, 1:4, 1:4] = 1
    gt[5:7, 5:7, 5:7] = 2
    rows = label_metrics(gt, gt, (1, 1, 1))
    assert [r["class"] for r in rows] == [1, 2]
    assert all(r["dice"] == 1.0 and r["hd95_vox"] == 0.0 for r in rows)


def test_evaluate_command(sfr, tmp_path):
    rng = np.random.default_rng(5)
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    spacing = (0.625, 0.625, 2.0)  # (x, y, z)
    truth = {}
    for i in range(3):
        g = _blob(rng, (20, 30, 30), 2).astype(np.uint8)
        p = _blob(rng, (20, 30, 30), 2).astype(np.uint8) if i < 2 else np.zeros_like(g)
        write_volume(Volume(g, spacing), gt_dir / f"c{i}.nii.gz")
        write_volume(Volume(p, spacing), pred_dir / f"c{i}.nii.gz")
        # confidence maps next to predictions are not predictions
        write_volume(Volume(np.ones(g.shape, np.float32), spacing), pred_dir / f"c{i}_confidence.nii.gz")
        truth[f"c{i}"] = (p, g)
    out = tmp_path / "report.json"
    proc = sfr("evaluate", "--pred", pred_dir, "--gt", gt_dir, "--json", out, check=True)
    assert "mean" in proc.stdout and "c2: prediction is empty" in proc.stdout
    report = json.loads(out.read_text())
    assert [r["case"] for r in report["cases"]] == ["c0", "c1", "c2"]
    for row in report["cases"][:2]:
        p, g = truth[row["case"]]
        assert row["dice"] == pytest.approx(mb.dc(p, g), abs=1e-6)
        assert row["hd95_mm"] == pytest.approx(mb.hd95(p, g, (2.0, 0.625, 0.625)), abs=1e-6)
        assert row["asd_vox"] == pytest.approx(mb.asd(p, g), abs=1e-6)
    assert report["cases"][2]["hd95_mm"] is None and report["cases"][2]["dice"] == 0.0
    assert report["mean"]["n_hd95_mm"] == 2
    assert report["mean"]["dice"] == pytest.approx(np.mean([r["dice"] for r in report["cases"]]))
    # geometry mismatch between a prediction and its ground truth
    write_volume(Volume(np.zeros((20, 30, 31), np.uint8), spacing), pred_dir / "c0.nii.gz")
    proc = sfr("evaluate", "--pred", pred_dir, "--gt", gt_dir)
    assert proc.returncode == 2 and "c0.nii.gz" in proc.stderr and "size" in proc.stderr
