"""Stage F Python API details: SFR+ extra labeled cases, case selection, user labels protected."""

from __future__ import annotations

import json

import numpy as np
import pytest

from SFRSegmenterLib.errors import Cancelled, SFRError
from SFRSegmenterLib.finetune import FinetuneConfig, finetune
from SFRSegmenterLib.io import read_image
from SFRSegmenterLib.manifest import init_project
from SFRSegmenterLib.pseudolabel import load_sam_model, predict_probabilities, pseudolabel


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sample_dir):
    import shutil

    root = tmp_path_factory.mktemp("api") / "proj"
    for sub in ("images", "labels"):  # a copy: one test tries to write over the user labels
        shutil.copytree(sample_dir / sub, root / sub)
    project = init_project(root, root / "images", root / "labels", labeled=1, validation=2)
    trusted = project.by_role("unlabeled")[0]
    extra = [(trusted.name, project.image_path(trusted), project.label_path(trusted))]
    cfg = FinetuneConfig(backbone="tiny_test", iterations=2, device="cpu")
    model_dir = finetune(project, cfg, out_dir=root / "models" / "sam", extra_labeled=extra)
    return project, model_dir, trusted


def test_extra_labeled_cases_join_training(trained):
    project, model_dir, trusted = trained
    meta = json.loads((model_dir / "sam-model.json").read_text())
    assert meta["labeled_cases"] == [project.by_role("labeled")[0].name]
    assert meta["extra_labeled"] == [trusted.name]


def test_extra_labeled_with_wrong_geometry_is_refused(trained, tmp_path):
    project, _, trusted = trained
    other = project.by_role("labeled")[0]
    bad = [(trusted.name, project.image_path(trusted), project.label_path(other))]
    with pytest.raises(SFRError, match="differs"):
        finetune(project, FinetuneConfig(backbone="tiny_test", iterations=1, device="cpu"),
                 out_dir=tmp_path / "m", extra_labeled=bad)


def test_probabilities_are_a_distribution(trained):
    project, model_dir, trusted = trained
    model = load_sam_model(model_dir, "cpu")
    image = read_image(project.image_path(trusted))
    probs = predict_probabilities(model, image, overlap=0.5)
    assert probs.shape == (3,) + image.shape and probs.dtype == np.float32
    assert np.allclose(probs.sum(0), 1, atol=1e-4) and probs.min() >= 0


def test_selected_cases_only_and_cancel(trained, tmp_path):
    project, model_dir, _ = trained
    chosen = [c.name for c in project.by_role("validation")]
    recs = pseudolabel(project, model_dir, out_dir=tmp_path / "val", cases=chosen, device="cpu")
    assert sorted(recs) == sorted(chosen)
    assert sorted(p.name for p in (tmp_path / "val").glob("*.nii.gz")) == sorted(
        [f"{c}.nii.gz" for c in chosen] + [f"{c}_confidence.nii.gz" for c in chosen])
    with pytest.raises(Cancelled):
        pseudolabel(project, model_dir, out_dir=tmp_path / "stop", device="cpu", should_stop=lambda: True)
    with pytest.raises(SFRError, match="no case named"):
        pseudolabel(project, model_dir, out_dir=tmp_path / "x", cases=["nope"], device="cpu")


def test_user_labels_are_never_overwritten(trained):
    project, model_dir, _ = trained
    labeled = project.by_role("labeled")[0]
    label_dir = project.label_path(labeled).parent
    before = project.label_path(labeled).read_bytes()
    with pytest.raises(SFRError, match="refusing to overwrite"):
        pseudolabel(project, model_dir, out_dir=label_dir, cases=[labeled.name], device="cpu")
    assert project.label_path(labeled).read_bytes() == before


def test_learning_rate_warm_up_ramps_then_decays(trained, tmp_path):
    from SFRSegmenterLib import events

    project = trained[0]
    seen = []
    events.add_sink(seen.append)
    try:
        finetune(project, FinetuneConfig(backbone="tiny_test", iterations=6, warmup=3, lr=0.003, device="cpu",
                                         embedding_cache=2, lora_rank=0), out_dir=tmp_path / "m")
    finally:
        events.remove_sink(seen.append)
    lrs = {e["step"]: e["lr"] for e in seen if e["event"] == "progress" and e["stage"] == "finetune"}
    assert lrs and 6 in lrs  # progress is throttled: check every step that was reported
    for step, lr in lrs.items():
        assert lr == pytest.approx(0.003 * (1 - (step - 1) / 6) ** 0.9 * min(1.0, step / 3), abs=1e-6)  # events round to 6 digits
    meta = json.loads((tmp_path / "m" / "sam-model.json").read_text())
    assert meta["config"]["warmup"] == 3
    with pytest.raises(SFRError, match="warm-up"):
        finetune(project, FinetuneConfig(backbone="tiny_test", iterations=1, warmup=-1, device="cpu"),
                 out_dir=tmp_path / "bad")


def test_default_warm_up_is_min_50_and_a_sixth_of_the_run_and_recorded(trained, tmp_path):
    """The default (None) warms up over min(50, iterations // 6) steps; the model records the number."""
    from SFRSegmenterLib.sam.config import resolved_warmup

    assert FinetuneConfig().warmup is None
    assert resolved_warmup(FinetuneConfig()) == 50  # 6000 iterations
    assert resolved_warmup(FinetuneConfig(iterations=300)) == 50
    assert resolved_warmup(FinetuneConfig(iterations=120)) == 20
    assert resolved_warmup(FinetuneConfig(iterations=5)) == 0
    assert resolved_warmup(FinetuneConfig(iterations=300, warmup=0)) == 0  # explicit: as given
    finetune(trained[0], FinetuneConfig(backbone="tiny_test", iterations=12, device="cpu", embedding_cache=2,
                                        lora_rank=0), out_dir=tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "sam-model.json").read_text())
    assert meta["config"]["warmup"] == 2
