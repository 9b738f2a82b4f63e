"""Stage F's files feed stage R, and R notices when F's model changed after the pseudo-labels."""

from __future__ import annotations

import time

import pytest
from conftest import copy_samples

from SFRSegmenterLib.errors import SFRError
from SFRSegmenterLib.finetune import FinetuneConfig, finetune
from SFRSegmenterLib.manifest import init_project
from SFRSegmenterLib.pseudolabel import pseudolabel
from SFRSegmenterLib.retrain import RetrainConfig, retrain


def test_real_pseudo_labels_train_and_staleness_is_detected(tmp_path, sample_cases):
    images, labels = copy_samples(tmp_path, sample_cases[:4])
    project = init_project(tmp_path / "proj", images, labels=labels, labeled=2)
    sam = FinetuneConfig(backbone="tiny_test", iterations=2, batch_size=1, device="cpu", save_every=2)
    sam_dir, pseudo_dir = project.root / "models" / "sam", project.root / "pseudo"
    finetune(project, sam, out_dir=sam_dir)
    pseudolabel(project, sam_dir, out_dir=pseudo_dir, device="cpu")
    cfg = RetrainConfig(iterations=1, crop=(16, 32, 32), device="cpu", labeled_bs=1, unlabeled_bs=1)
    model_dir = retrain(project, cfg, out_dir=tmp_path / "vnet1", pseudo_dir=pseudo_dir, sam_model_dir=sam_dir)
    assert (model_dir / "model.pt").exists()

    time.sleep(0.05)
    finetune(project, FinetuneConfig(**{**sam.__dict__, "seed": 7}), out_dir=sam_dir)  # a new SAM model
    with pytest.raises(SFRError, match="stale pseudo-label"):
        retrain(project, cfg, out_dir=tmp_path / "vnet2", pseudo_dir=pseudo_dir, sam_model_dir=sam_dir)
