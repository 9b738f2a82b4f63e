"""Re-training data: aligned augmentation (property test), padding, stale pseudo-labels."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrain_testutil import make_project, make_pseudo
from SFRSegmenterLib.errors import SFRError
from SFRSegmenterLib.io import read_label, write_volume
from SFRSegmenterLib.manifest import write_json_atomic
from SFRSegmenterLib.retrain import RetrainConfig, retrain
from SFRSegmenterLib.retrain.data import auto_crop, crop_and_augment, load_unlabeled, make_batch, CaseData

SMALL = dict(crop=(32, 32, 32), device="cpu", threads=1, save_every=0, iterations=1)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(3, 20), st.integers(3, 20), st.integers(3, 20)),
    crop=st.tuples(st.integers(1, 24), st.integers(1, 24), st.integers(1, 24)),
    seed=st.integers(0, 2**32 - 1),
    augment=st.sampled_from(["rotflip", "crop"]),
)
def test_augmentation_keeps_image_and_label_aligned(shape, crop, seed, augment):
    # every voxel of the image encodes its own position; the label is a function of the image,
    # so the two stay aligned iff label_aug == f(image_aug) everywhere
    n = int(np.prod(shape))
    image = (np.arange(n, dtype=np.float32) + 1).reshape(shape)
    label = (image.astype(np.int64) % 7).astype(np.uint8)
    conf = image / n
    img_c, lab_c, conf_c = crop_and_augment([image, label, conf], crop, np.random.default_rng(seed), augment)
    assert img_c.shape == lab_c.shape == conf_c.shape == tuple(crop)
    inside = img_c > 0  # zero = padding (crop larger than the volume)
    assert np.array_equal(lab_c[inside], (img_c[inside].astype(np.int64) % 7).astype(np.uint8))
    assert np.array_equal(lab_c[~inside], np.zeros(int((~inside).sum()), np.uint8))
    assert np.allclose(conf_c, img_c / n)
    # the crop is a real piece of the volume: its voxels are distinct and all come from it
    vals = img_c[inside]
    assert len(np.unique(vals)) == vals.size and vals.size == int(np.prod(np.minimum(shape, crop)))
    # and with "crop" only, it is a contiguous block in the original order
    if augment == "crop" and vals.size:
        idx = np.argwhere(inside)
        block = img_c[tuple(slice(a, b + 1) for a, b in zip(idx.min(0), idx.max(0)))]
        lo = np.unravel_index(int(block.flat[0]) - 1, shape)
        ref = image[tuple(slice(l, l + s) for l, s in zip(lo, block.shape))]
        assert np.array_equal(block, ref)


def test_make_batch_is_reproducible_and_slot_based():
    rng = np.random.default_rng(0)
    cases = [CaseData(f"c{i}", rng.normal(size=(20, 24, 24)).astype(np.float32), rng.integers(0, 2, (20, 24, 24)).astype(np.uint8)) for i in range(3)]
    x, y = make_batch(cases, [0, 1], (16, 16, 16), 7, 5, 0, "rotflip")
    x2, y2 = make_batch(cases, [1], (16, 16, 16), 7, 5, 0, "rotflip")
    assert x.shape == (2, 1, 16, 16, 16) and y.shape == (2, 16, 16, 16) and y.dtype == np.int64
    assert np.array_equal(x[1], x2[0]) and np.array_equal(y[1], y2[0])  # slot 1 is slot 1 on any process


def test_auto_crop_small_and_large():
    assert auto_crop([(88, 141, 244), (88, 150, 200)]) == (80, 112, 112)
    assert auto_crop([(35, 51, 35), (36, 52, 38), (34, 47, 40)]) == (32, 48, 32)
    assert auto_crop([(5, 9, 9)]) == (16, 16, 16)


@pytest.fixture
def project(tmp_path):
    p = make_project(tmp_path / "proj", n_labeled=1, n_unlabeled=2, n_validation=0, copy_images=True)
    make_pseudo(p)
    return p


def test_crop_larger_than_volume_is_padded(project, tmp_path):
    out = retrain(project, RetrainConfig(ssl="supervised", **dict(SMALL, crop=(48, 32, 32))), pseudo_dir=project.root / "pseudo", out_dir=tmp_path / "m")
    assert (out / "model.pt").exists()


def test_missing_pseudo_labels(project, tmp_path):
    (project.root / "pseudo" / "pseudo-labels.json").unlink()
    with pytest.raises(SFRError, match="pseudo-labels.json.*--no-sam"):
        retrain(project, RetrainConfig(**SMALL), pseudo_dir=project.root / "pseudo", out_dir=tmp_path / "m")
    retrain(project, RetrainConfig(use_sam=False, **SMALL), pseudo_dir=project.root / "pseudo", out_dir=tmp_path / "m")  # --no-sam works


def test_pseudo_labels_older_than_sam_model(project, tmp_path):
    meta = project.root / "models" / "sam" / "sam-model.json"
    time.sleep(0.01)
    later = time.time() + 5
    os.utime(meta, (later, later))  # the SAM model was saved again after the pseudo-labels
    with pytest.raises(SFRError, match="stale pseudo-labels") as e:
        retrain(project, RetrainConfig(**SMALL), pseudo_dir=project.root / "pseudo", out_dir=tmp_path / "m",
                sam_model_dir=meta.parent)
    assert "pseudo-labels.json" in str(e.value)


def test_pseudo_labels_of_another_sam_model(project, tmp_path):
    meta = project.root / "models" / "sam" / "sam-model.json"
    st_ = meta.stat()
    write_json_atomic(meta, {"model_id": "sam-test-2"})
    os.utime(meta, (st_.st_atime, st_.st_mtime))
    with pytest.raises(SFRError, match="sam-test-2"):
        retrain(project, RetrainConfig(**SMALL), pseudo_dir=project.root / "pseudo", out_dir=tmp_path / "m",
                sam_model_dir=meta.parent)
    # the check follows the model the caller names: none named, only the project and the files are checked
    retrain(project, RetrainConfig(**SMALL), pseudo_dir=project.root / "pseudo", out_dir=tmp_path / "m2")


def test_training_with_sam_needs_the_pseudo_label_folder(project, tmp_path):
    with pytest.raises(SFRError, match="pseudo_dir"):
        retrain(project, RetrainConfig(**SMALL), out_dir=tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_pseudo_labels_of_another_project(project, tmp_path):
    idx = project.root / "pseudo" / "pseudo-labels.json"
    data = json.loads(idx.read_text())
    data["project"] = "someone-else"
    idx.write_text(json.dumps(data))
    with pytest.raises(SFRError, match="someone-else") as e:
        retrain(project, RetrainConfig(**SMALL), pseudo_dir=project.root / "pseudo", out_dir=tmp_path / "m")
    assert str(idx) in str(e.value)


def test_image_changed_since_pseudo_labels(project, tmp_path):
    case = project.by_role("unlabeled")[1]
    path = project.image_path(case)
    from SFRSegmenterLib.io import read_image

    img = read_image(path)
    img.array = img.array + 1
    import SimpleITK as sitk  # the user changed the image with another tool (the engine never writes it)

    sitk.WriteImage(img.to_sitk(), str(path))
    with pytest.raises(SFRError, match="sha256") as e:
        retrain(project, RetrainConfig(**SMALL), pseudo_dir=project.root / "pseudo", out_dir=tmp_path / "m")
    assert f"{case.name}.nii.gz" in str(e.value)


def test_pseudo_label_in_wrong_geometry(project, tmp_path):
    case = project.by_role("unlabeled")[0]
    p = project.root / "pseudo" / f"{case.name}.nii.gz"
    lab = read_label(p)
    lab.spacing = (2.0, 2.0, 2.0)
    write_volume(lab, p)
    meta = project.root / "models" / "sam" / "sam-model.json"
    os.utime(meta, (meta.stat().st_mtime - 10,) * 2)  # keep the pseudo-label newer than the model
    idx = project.root / "pseudo" / "pseudo-labels.json"
    data = json.loads(idx.read_text())
    data["model_metadata_mtime"] = meta.stat().st_mtime
    idx.write_text(json.dumps(data))
    with pytest.raises(SFRError, match="spacing") as e:
        load_unlabeled(project, project.by_role("unlabeled"), project.root / "pseudo", True)
    assert str(p) in str(e.value)


def test_stage_f_contract_names_agree():
    """Stage R reads the files stage F writes: same metadata file name, same index keys."""
    import inspect

    from SFRSegmenterLib import finetune, pseudolabel
    from SFRSegmenterLib.retrain import data

    assert data.SAM_MODEL_META == finetune.MODEL_META
    assert data.PSEUDO_INDEX == pseudolabel.PSEUDO_JSON
    assert "model_metadata_mtime=" in inspect.getsource(pseudolabel)
