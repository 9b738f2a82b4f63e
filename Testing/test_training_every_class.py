"""Training dynamics on real data: a short stage-R run with the demo's settings predicts every class.

The demo once published pseudo-labels without the anterior hippocampus (class 1) on all 10 cases:
its slim V-Net (8 base filters) dropped half of its 8 output-layer channels at every step
(Dropout3d 0.5) and learned "hippocampus = posterior" only, even after 1,200 iterations.
"""

from __future__ import annotations

import numpy as np
import pytest

from SFRSegmenterLib.run.budget import FAST
from SFRSegmenterLib.io import read_image, read_label
from SFRSegmenterLib.manifest import init_project
from SFRSegmenterLib.retrain import RetrainConfig, load_model, predict_volume, retrain


def test_augment_auto_keeps_orientation_for_several_structures():
    assert RetrainConfig().resolved_augment(3) == "crop"
    assert RetrainConfig().resolved_augment(2) == "rotflip"
    assert RetrainConfig(augment="rotflip").resolved_augment(3) == "rotflip"


def test_demo_vnet_predicts_both_hippocampus_structures(tmp_path, sample_dir, one_torch_thread):
    project = init_project(tmp_path / "p", sample_dir / "images", sample_dir / "labels", labeled=2)
    cfg = RetrainConfig(ssl="supervised", use_sam=False, iterations=150, device="cpu", save_every=1000,
                        **FAST["vnet_options"])
    model = load_model(retrain(project, cfg, pseudo_dir=project.root / "pseudo", out_dir=tmp_path / "vnet"), "cpu")
    for case in project.by_role("unlabeled")[:3]:
        pred = predict_volume(model, read_image(project.image_path(case)).array).argmax(0)
        gt = read_label(project.label_path(case)).array
        for k in (1, 2):
            assert (pred == k).any(), f"class {k} predicted nowhere in {case.name}"
            dice = 2 * np.count_nonzero((pred == k) & (gt == k)) / (np.count_nonzero(pred == k) + np.count_nonzero(gt == k))
            assert dice > 0.3, f"class {k} Dice {dice:.2f} in {case.name}"
