"""Stage R checks the run's pseudo-labels against the SAM model that made them, not the project's.

A standalone ``sfr finetune`` writes ``PROJECT/models/sam``; a later ``sfr run`` fine-tunes its own
model in ``runs/<id>/stages/finetune-r0`` and pseudo-labels with it. Its stage R must compare the
pseudo-labels with that model (the one passed to it), and still refuse pseudo-labels made by
another model.
"""

from __future__ import annotations

import json

import pytest
from conftest import copy_samples
from test_run_pipeline import CASES, TINY, latest, make_project

from SFRSegmenterLib.errors import SFRError


def test_sfr_run_after_a_standalone_finetune(tmp_path, sample_dir, sfr):
    root = make_project(tmp_path / "proj", sample_dir, cases=CASES[:4], validation=0)
    sfr("finetune", root, "--backbone", "tiny_test", "--iterations", "2", "--save-every", "2", "--device", "cpu",
        "--seed", "7", check=True)
    assert (root / "models" / "sam" / "sam-model.json").exists()
    out = sfr("run", root, *TINY, "--no-report")
    assert out.returncode == 0, out.stderr
    run = latest(root)
    index = json.loads((run / "stages" / "pseudolabel-r0" / "pseudo-labels.json").read_text())
    own = json.loads((run / "stages" / "finetune-r0" / "sam-model.json").read_text())
    project_model = json.loads((root / "models" / "sam" / "sam-model.json").read_text())
    assert index["model_id"] == own["model_id"] != project_model["model_id"]


def test_retrain_refuses_pseudo_labels_of_another_model_than_the_expected_one(tmp_path, sample_cases):
    from SFRSegmenterLib.finetune import FinetuneConfig, finetune
    from SFRSegmenterLib.manifest import init_project
    from SFRSegmenterLib.pseudolabel import pseudolabel
    from SFRSegmenterLib.retrain import RetrainConfig, retrain

    images, labels = copy_samples(tmp_path, sample_cases[:4])
    project = init_project(tmp_path / "proj", images, labels=labels, labeled=2)
    sam = FinetuneConfig(backbone="tiny_test", iterations=2, batch_size=1, device="cpu", save_every=2)
    first = finetune(project, sam, out_dir=tmp_path / "sam1")
    other = finetune(project, FinetuneConfig(**{**sam.__dict__, "seed": 7}), out_dir=tmp_path / "sam2")
    pseudolabel(project, model_dir=first, out_dir=tmp_path / "pseudo", device="cpu")
    cfg = RetrainConfig(iterations=1, crop=(16, 32, 32), device="cpu", labeled_bs=1, unlabeled_bs=1)
    with pytest.raises(SFRError, match="stale pseudo-label"):
        retrain(project, cfg, pseudo_dir=tmp_path / "pseudo", out_dir=tmp_path / "vnet", sam_model_dir=other)
    model = retrain(project, cfg, pseudo_dir=tmp_path / "pseudo", out_dir=tmp_path / "vnet", sam_model_dir=first)
    assert (model / "model.pt").exists()


def test_stage_commands_use_the_project_folders_and_sfr_retrain_checks_the_named_model(tmp_path, sample_dir, sfr):
    """Only the commands know PROJECT/models/sam, PROJECT/pseudo and PROJECT/models/vnet (the stage
    functions take every folder explicitly); ``sfr retrain --sam-model`` names the model to check."""
    root = make_project(tmp_path / "proj", sample_dir, cases=CASES[:4], validation=0)
    tiny = ("--backbone", "tiny_test", "--iterations", "2", "--save-every", "2", "--device", "cpu")
    sfr("finetune", root, *tiny, check=True)
    sfr("pseudolabel", root, "--device", "cpu", check=True)
    assert (root / "pseudo" / "pseudo-labels.json").exists()
    sfr("finetune", root, *tiny, "--seed", "7", "--out", tmp_path / "other-sam", check=True)
    v = ("--iterations", "1", "--crop", "16", "32", "32", "--batch", "1", "1", "--device", "cpu")
    out = sfr("retrain", root, *v, "--sam-model", tmp_path / "other-sam")
    assert out.returncode == 2 and "stale pseudo-labels" in out.stderr, out.stderr
    assert not (root / "models" / "vnet" / "model.pt").exists()
    sfr("retrain", root, *v, check=True)  # default: the project's own model, which made them
    assert (root / "models" / "vnet" / "model.pt").exists()
    sfr("finetune", root, *tiny, "--seed", "9", check=True)  # the project's model saved again
    out = sfr("retrain", root, *v, "--out", tmp_path / "vnet2")
    assert out.returncode == 2 and "stale pseudo-labels" in out.stderr, out.stderr
