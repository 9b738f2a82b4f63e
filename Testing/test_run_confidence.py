"""Confidence, flagged slices and low-confidence masks on real hippocampus label geometry.

Probabilities are built from a real ground-truth label: a smoothed one-hot map (soft,
realistic boundaries), with a known slice made uncertain.  The functions must find it.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from SFRSegmenterLib import confidence as C
from SFRSegmenterLib.io import read_image, read_label, write_volume


def _probs(label: np.ndarray, sigma: float = 0.6, classes: int | None = None) -> np.ndarray:
    K = classes or int(label.max()) + 1
    onehot = np.stack([(label == k).astype(np.float32) for k in range(K)])
    soft = np.stack([gaussian_filter(o, sigma) for o in onehot]) + 1e-6
    return (soft / soft.sum(axis=0, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def case(sample_dir):
    name = "hippocampus_003"
    img = read_image(sample_dir / "images" / f"{name}.nii.gz")
    lab = read_label(sample_dir / "labels" / f"{name}.nii.gz", img)
    return name, img, lab


def test_case_confidence_is_mean_max_softmax(case):
    _, _, lab = case
    sharp = _probs(lab.array, sigma=0.0)
    assert C.case_confidence(sharp) == pytest.approx(1.0, abs=1e-5)
    soft = _probs(lab.array, sigma=0.8)
    c = C.case_confidence(soft)
    assert c == pytest.approx(float(soft.max(axis=0).mean()), rel=1e-6)
    assert 0.5 < c < 1.0
    # the torch path gives the same number
    import torch

    assert C.case_confidence(torch.from_numpy(soft)) == pytest.approx(c, rel=1e-6)
    assert C.is_trusted(0.99) and not C.is_trusted(0.98) and C.TAU == 0.985


def test_uncertain_slice_is_flagged_first_and_background_slices_never(case):
    _, _, lab = case
    binary = (lab.array > 0).astype(np.uint8)
    prob = _probs(binary)
    z_with = np.flatnonzero(binary.reshape(binary.shape[0], -1).any(axis=1))
    assert z_with.size > 5
    bad = int(z_with[len(z_with) // 2])
    # the model hesitates over the whole structure in one mid slice
    region = gaussian_filter(binary[bad].astype(float), 1.5) > 0.05
    prob[1, bad][region] = 0.55
    prob[0, bad][region] = 0.45
    # and every background voxel far from it is a little unsure (0.93): whole-slice means of
    # slices without structure then look worse than slices where the structure is sharp
    bg = binary == 0
    far = ~(gaussian_filter(binary.astype(float), 3) > 0.01)
    prob[0][far & bg] = 0.93
    prob[1][far & bg] = 0.07

    review = C.review_case("x", prob, k=5)
    flagged = [i for i, _ in review.flagged_slices]
    assert flagged[0] == bad
    assert len(flagged) == 5
    assert set(flagged) <= set(range(binary.shape[0]))
    empty = set(range(binary.shape[0])) - set(z_with.tolist())
    # slices with no structure have roi only if something has >= 0.1 foreground: none here
    assert not (set(flagged) & empty)
    # the flagged confidence is the mean over the slice's region, not the whole slice
    conf = prob.max(axis=0)
    roi = C.region_of_interest(conf, prob.argmax(0))
    assert review.flagged_slices[0][1] == pytest.approx(float(conf[bad][roi[bad]].mean()), rel=1e-5)
    assert review.flagged_slices[0][1] < 0.8
    # whole-slice means would have pointed at background slices instead: the reason for the roi
    whole = C.slice_confidence(conf)
    worst_whole = np.argsort(whole)[:5]
    assert set(worst_whole.tolist()) & empty
    # mean ranking also finds the bad slice among its five
    assert bad in [i for i, _ in C.flag_slices(conf, roi, 5, ranking="mean")]


def test_flagged_slices_are_spread_over_the_structure():
    """One bad stretch of 8 neighbouring slices and a second, milder one: the five flags take the
    worst slice of each stretch and keep apart, instead of five neighbours of the first."""
    conf = np.full((30, 8, 8), 0.99, dtype=np.float32)
    for z, c in zip(range(4, 12), (0.60, 0.55, 0.50, 0.45, 0.50, 0.55, 0.60, 0.65)):
        conf[z] = c
    for z in (20, 21, 22):
        conf[z] = 0.8
    roi = np.ones(conf.shape, dtype=bool)
    flagged = [i for i, _ in C.flag_slices(conf, roi, 5)]
    assert len(flagged) == 5 and flagged[0] == 7  # the worst slice still comes first
    gap = C.spread_out(list(range(30)), 5, 30)  # 30 slices, 5 flags: 3 apart
    assert min(abs(a - b) for a in flagged for b in flagged if a != b) >= 3
    assert any(20 <= i <= 22 for i in flagged)  # the second stretch is reached
    assert gap == [0, 3, 6, 9, 12]
    # too few slices for the gap: the next worst fill the rest (k come back)
    few = np.full((4, 8, 8), 0.9, dtype=np.float32)
    assert len(C.flag_slices(few, np.ones(few.shape, dtype=bool), 4)) == 4


def test_low_confidence_mask_is_near_the_structure(case):
    _, _, lab = case
    binary = (lab.array > 0).astype(np.uint8)
    prob = _probs(binary, sigma=1.0)
    conf = prob.max(axis=0)
    label = prob.argmax(axis=0)
    roi = C.region_of_interest(conf, label)
    low = C.low_confidence_mask(conf, roi, 0.9)
    assert low.any()
    assert np.all(conf[low] < 0.9)
    # every uncertain voxel near the structure is in the mask
    near = roi & (conf < 0.9)
    assert np.array_equal(low, near)
    # no voxel of the mask is far (> margin + blur) from the ground-truth structure
    from scipy.ndimage import distance_transform_edt

    dist = distance_transform_edt(binary == 0)
    assert dist[low].max() <= 6
    review = C.review_case("x", prob)
    assert review.low_confidence_voxels == int(low.sum())


def test_review_from_saved_maps_equals_review_from_probabilities(case, tmp_path):
    name, img, lab = case
    prob = _probs(lab.array, sigma=0.9)  # three classes: anterior, posterior
    assert prob.shape[0] == 3
    review = C.review_case(name, prob, k=4)
    write_volume(img.with_array(review.conf.astype(np.float32)), tmp_path / "c.nii.gz")
    write_volume(img.with_array(review.label.astype(np.uint8)), tmp_path / "l.nii.gz")
    conf = read_image(tmp_path / "c.nii.gz").array
    label = read_label(tmp_path / "l.nii.gz").array
    again = C.review_from_maps(name, conf, label, k=4)
    assert again.to_json() == review.to_json()
    j = review.to_json()
    assert set(j) == {"case", "confidence", "flagged_slices", "low_confidence_voxels"}  # trust: sfrplus
    assert all(set(f) == {"index", "confidence"} for f in j["flagged_slices"])
    assert len(review.slice_confidence) == lab.array.shape[0]


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        C.voxel_confidence(np.zeros((4, 4, 4)))
    with pytest.raises(ValueError):
        C.flag_slices(np.ones((3, 4, 4)), np.ones((3, 4, 4), bool), ranking="nope")
    # nothing near a structure: nothing flagged
    conf = np.ones((3, 4, 4), np.float32)
    assert C.flag_slices(conf, C.region_of_interest(conf, np.zeros((3, 4, 4)))) == []


def test_a_confident_empty_prediction_is_not_trusted_with_the_guard(case):
    name, img, lab = case
    good = _probs(lab.array, sigma=0.6)
    missed = np.zeros_like(lab.array)
    missed[tuple(np.argwhere(lab.array > 0)[0])] = 1  # the model found one voxel of the structure
    empty = _probs(missed, sigma=0.6, classes=good.shape[0])
    # Eq. 8 rates the miss as more confident than the good prediction: little boundary, all background
    assert C.case_confidence(empty) > C.case_confidence(good)
    need = 0.1 * np.count_nonzero(lab.array)
    tau = C.case_confidence(good) - 1e-4
    from SFRSegmenterLib.sfrplus import ConfidenceAndSize, TrustContext

    def measured(prob):
        review = C.review_case(name, prob)
        return {"confidence": review.confidence, "foreground_voxels": review.foreground_voxels, "voxel_mm3": 1.0}

    context = TrustContext((float(np.count_nonzero(lab.array)),))  # one labeled structure, 1 mm^3 voxels
    assert ConfidenceAndSize(tau, 0.0).trusted(measured(empty), context)  # the paper's rule trusts it
    assert not ConfidenceAndSize(tau, 0.1).trusted(measured(empty), context)
    ok = measured(good)
    assert ConfidenceAndSize(tau, 0.1).trusted(ok, context)
    assert ok["foreground_voxels"] == np.count_nonzero(good.argmax(axis=0)) >= need


def test_structure_drift_is_measured_against_the_labeled_size():
    # LA, 1 labeled case: round 0's structures 1.06x the labeled one, round 1's 0.24x (Dice 68 -> 31)
    assert C.structure_drift(1.06, 0.24)
    assert C.structure_drift(1.0, 2.5) and C.structure_drift(1.0, 0.0)
    # a round that brings an over-segmenting round 0 back to the labeled size is not drift
    assert not C.structure_drift(2.0, 1.0) and not C.structure_drift(0.3, 0.9)
    # within a factor 2 of the kept round's distance, or unknown: not drift
    assert not C.structure_drift(1.0, 1.9) and not C.structure_drift(0.8, 0.45)
    assert not C.structure_drift(None, 0.1) and not C.structure_drift(1.0, None)
