"""Confidence of a prediction, for SFR+ case selection and for a person reviewing results.

Everything starts from the softmax probabilities ``prob`` of one case, shape ``[K, D, H, W]``
(class axis first, slices along axis 0 as everywhere in the engine).

* **Voxel confidence** ``conf = max_c prob_c`` (in ``[1/K, 1]``).
* **Case confidence** ``C_j = mean(conf)`` over all voxels: Eq. 8 of SFR+; a case with
  ``C_j >= tau`` (``TAU = 0.985``) is *trusted*.  Background voxels are included, exactly as in
  the paper, so the number mostly measures how sharp the boundary of the structure is relative
  to the size of the volume; it is meant for ranking and thresholding cases, not for reading.
* **Region of interest** (what a reviewer looks at): the voxels where the model predicts the
  structure or gives it at least ``candidate_prob`` (0.1) probability, dilated by
  ``margin`` (2) voxels in-plane.  Almost every voxel of a volume is confidently background;
  averaging over them would make every slice look ~100 % confident and a slice that lies far
  from the anatomy would compete with the slices where the structure is.  Restricting to the
  region around the (possible) structure makes the numbers speak about the segmentation.
* **Per-slice confidence** along axis 0: the mean voxel confidence over the slice's
  region-of-interest voxels (``NaN`` for a slice without any; the whole-slice mean is also
  available).
* **Flagged slices**: the ``k`` slices a clinician should look at first.  They are ranked by
  the *expected number of wrong voxels* in the slice, ``sum(1 - conf)`` over its region voxels
  (if the probabilities were calibrated, this is exactly the expected number of voxels to
  correct).  Ranking by the mean alone favours the first and last slices of a structure, where a
  handful of boundary voxels are uncertain but there is little to fix; ranking by the uncertainty
  mass points at the slices where the most editing work is.  ``bench/sfr_plus.py`` measures both
  rankings against the true per-slice error.  Each flagged slice reports its mean region
  confidence (what ``review.json`` calls ``confidence``).
* **Low-confidence mask**: region-of-interest voxels with ``conf < voxel_threshold`` (0.9).
* **Empty-prediction guard** (ours, not in the paper): a case is trusted only when its predicted
  structure has at least ``min_foreground`` voxels.  A model that misses the structure predicts
  almost only background, confidently, and Eq. 8 then rates the case among the *most* confident
  (bench/results/sfr_plus_la.md).  ``sfr run`` sets ``min_foreground`` to ``min_structure``
  (0.25) times the smallest labeled structure, in mm^3; why 0.25: bench/results/sfr_plus_trust_la.md.
  Distrusting a good case costs little (it is re-trained with SAM's label, as in plain SFR);
  trusting a bad one teaches SAM its mistake.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: SFR+ threshold on the case confidence (paper default).
TAU = 0.985
#: Voxels below this confidence near the structure form the low-confidence mask.
VOXEL_THRESHOLD = 0.9
#: A voxel is a candidate structure voxel when the foreground probability reaches this.
CANDIDATE_PROB = 0.1
#: In-plane dilation (voxels) of the candidate structure that defines the region of interest.
MARGIN = 2
#: Default number of flagged slices per case.
FLAG_K = 5
#: Flagged slices lie at least this share of the eligible slices apart (``k`` flags over ``n``
#: slices: ``n * FLAG_SPREAD / k``, at least 2): five neighbouring slices of one bad stretch were
#: worth less to a clinician than five random slices through the structure (bench/results/
#: clinician_corrections.md), so the flags cover several stretches.
FLAG_SPREAD = 0.5
RANKINGS = ("mass", "mean")
#: A case is trusted only if its predicted structure is at least this fraction of the smallest
#: labeled structure (by physical volume); see the empty-prediction guard above.
MIN_STRUCTURE_FRACTION = 0.25
#: An SFR+ round has drifted when its predicted structures are this many times farther from the
#: labeled structures' size than the kept round's were (see ``structure_drift``).
DRIFT_FACTOR = 2.0


def _as_numpy(prob) -> np.ndarray:
    try:  # torch tensor
        prob = prob.detach().float().cpu().numpy()
    except AttributeError:
        pass
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 4:
        raise ValueError(f"probabilities must be [K, D, H, W], got shape {prob.shape}")
    if prob.shape[0] < 2:
        raise ValueError("probabilities need at least 2 classes (background first)")
    return prob


def voxel_confidence(prob) -> np.ndarray:
    """``max_c prob_c`` per voxel, float32 ``[D, H, W]``."""
    return _as_numpy(prob).max(axis=0)


def case_confidence(prob_or_conf) -> float:
    """SFR+ Eq. 8: the mean over voxels of the max softmax probability."""
    arr = np.asarray(prob_or_conf) if not hasattr(prob_or_conf, "detach") else _as_numpy(prob_or_conf)
    conf = arr.max(axis=0) if arr.ndim == 4 else arr
    return float(conf.mean(dtype=np.float64))


def is_trusted(confidence: float, tau: float = TAU) -> bool:
    return bool(confidence >= tau)


def structure_drift(kept_ratio: "float | None", new_ratio: "float | None", factor: float = DRIFT_FACTOR) -> bool:
    """Did an SFR+ round move the predicted structures away from the labeled ones?

    A ratio is the median predicted structure volume over the unlabeled cases divided by the median
    labeled structure volume (1 = the same size as what the user labeled).  The new round has
    drifted when its ratio is more than ``factor`` times farther from 1 (on a log scale) than the
    kept round's: 1.06 -> 0.24 is drift, 2.0 -> 1.0 is not (the LA round that led to this rule:
    docs/run.md, "SFR+ rounds").  Unknown ratios are never drift.
    """
    if kept_ratio is None or new_ratio is None or kept_ratio <= 0:
        return False
    if new_ratio <= 0:
        return True
    return bool(abs(np.log(new_ratio)) > abs(np.log(kept_ratio)) + np.log(factor))


def region_of_interest(conf: np.ndarray, label: np.ndarray, margin: int = MARGIN,
                       candidate_prob: float = CANDIDATE_PROB) -> np.ndarray:
    """Voxels near the predicted or possible structure (bool ``[D, H, W]``).

    Candidate structure = voxels labelled foreground, plus background-labelled voxels whose
    confidence is at most ``1 - candidate_prob`` (there, the background probability equals the
    confidence, so the foreground classes together have at least ``candidate_prob``).  The same
    region is therefore computed from the probabilities or from a saved confidence map + label.
    The candidate set is dilated by ``margin`` voxels in-plane only, so a slice without any
    structure stays outside the region.
    """
    conf = np.asarray(conf, dtype=np.float32)
    candidate = (np.asarray(label) > 0) | (conf <= np.float32(1.0 - candidate_prob))
    if margin > 0 and candidate.any():
        footprint = np.zeros((1, 3, 3), dtype=bool)
        footprint[0, 1, :] = True
        footprint[0, :, 1] = True
        from scipy.ndimage import binary_dilation  # here: every ``sfr`` command imports this module

        candidate = binary_dilation(candidate, structure=footprint, iterations=int(margin))
    return candidate


def slice_confidence(conf: np.ndarray, roi: "np.ndarray | None" = None) -> np.ndarray:
    """Mean confidence of each slice (axis 0) over ``roi`` voxels (NaN where none)."""
    conf = np.asarray(conf, dtype=np.float32)
    if roi is None:
        return conf.reshape(conf.shape[0], -1).mean(axis=1, dtype=np.float64)
    roi = np.asarray(roi, dtype=bool)
    counts = roi.reshape(roi.shape[0], -1).sum(axis=1)
    sums = np.where(roi, conf, 0).reshape(conf.shape[0], -1).sum(axis=1, dtype=np.float64)
    out = np.full(conf.shape[0], np.nan)
    has = counts > 0
    out[has] = sums[has] / counts[has]
    return out


def slice_uncertainty_mass(conf: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """``sum(1 - conf)`` over each slice's ``roi`` voxels: the expected number of wrong voxels."""
    u = np.where(np.asarray(roi, dtype=bool), 1.0 - np.asarray(conf, dtype=np.float64), 0.0)
    return u.reshape(u.shape[0], -1).sum(axis=1)


def flag_slices(conf: np.ndarray, roi: np.ndarray, k: int = FLAG_K, ranking: str = "mass") -> list:
    """The ``k`` slices to review first: ``[(index, mean roi confidence), ...]``, worst first.

    Only slices with region-of-interest voxels are eligible (an empty background slice is never
    flagged).  ``ranking="mass"`` orders by expected wrong voxels, ``"mean"`` by mean confidence.
    """
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}")
    per_slice = slice_confidence(conf, roi)
    eligible = np.flatnonzero(~np.isnan(per_slice))
    if eligible.size == 0 or k <= 0:
        return []
    if ranking == "mass":
        mass = slice_uncertainty_mass(conf, roi)
        # ties (e.g. several fully confident slices) broken by the lower mean confidence
        order = sorted(eligible, key=lambda i: (-mass[i], per_slice[i], i))
    else:
        order = sorted(eligible, key=lambda i: (per_slice[i], i))
    return [(int(i), float(per_slice[i])) for i in spread_out(order, k, len(eligible))]


def spread_out(order: list, k: int, eligible: int, spread: float = FLAG_SPREAD) -> list:
    """The first ``k`` of ``order`` (worst first) that lie at least ``eligible * spread / k`` slices
    (and at least 2) from every one taken before; where too few are that far apart, the next worst
    fill the rest, so that ``k`` come back whenever ``k`` are eligible."""
    gap = max(2, int(round(eligible * spread / max(1, k)))) if spread > 0 else 1
    taken = []
    for i in order:
        if len(taken) == k:
            break
        if all(abs(int(i) - int(j)) >= gap for j in taken):
            taken.append(i)
    for i in order:
        if len(taken) == k:
            break
        if i not in taken:
            taken.append(i)
    return taken


def low_confidence_mask(conf: np.ndarray, roi: np.ndarray, threshold: float = VOXEL_THRESHOLD) -> np.ndarray:
    """Region-of-interest voxels whose confidence is below ``threshold`` (bool ``[D, H, W]``)."""
    return np.asarray(roi, dtype=bool) & (np.asarray(conf) < threshold)


@dataclass
class CaseReview:
    """Everything the review needs about one case (see :func:`review_case`)."""

    case: str
    confidence: float
    flagged_slices: list  # [(index, confidence)]
    low_confidence_voxels: int
    foreground_voxels: int = 0  # voxels of the predicted structure (label > 0)
    slice_confidence: list = field(default_factory=list)  # per slice, None where no region
    conf: "np.ndarray | None" = field(default=None, repr=False)
    lowconf: "np.ndarray | None" = field(default=None, repr=False)
    label: "np.ndarray | None" = field(default=None, repr=False)

    def to_json(self) -> dict:
        """The measured part of a ``review.json`` entry (whether the case is trusted is
        :mod:`.sfrplus`'s decision; the whole entry: :func:`SFRSegmenterLib.review.review_record`)."""
        return {
            "case": self.case,
            "confidence": round(float(self.confidence), 6),
            "flagged_slices": [
                {"index": int(i), "confidence": round(float(c), 6)} for i, c in self.flagged_slices
            ],
            "low_confidence_voxels": int(self.low_confidence_voxels),
        }


def review_from_maps(
    case: str,
    conf: np.ndarray,
    label: np.ndarray,
    k: int = FLAG_K,
    voxel_threshold: float = VOXEL_THRESHOLD,
    margin: int = MARGIN,
    ranking: str = "mass",
) -> CaseReview:
    """Confidence, flagged slices and low-confidence mask from a voxel confidence map and the
    predicted label (what a run folder stores); equal to :func:`review_case`."""
    conf = np.asarray(conf, dtype=np.float32)
    roi = region_of_interest(conf, label, margin=margin)
    low = low_confidence_mask(conf, roi, voxel_threshold)
    c = case_confidence(conf)
    per_slice = slice_confidence(conf, roi)
    foreground = int(np.count_nonzero(np.asarray(label) > 0))
    return CaseReview(
        case=case,
        confidence=c,
        foreground_voxels=foreground,
        flagged_slices=flag_slices(conf, roi, k=k, ranking=ranking),
        low_confidence_voxels=int(low.sum()),
        slice_confidence=[None if np.isnan(v) else round(float(v), 6) for v in per_slice],
        conf=conf,
        lowconf=low,
        label=np.asarray(label),
    )


def review_case(case: str, prob, largest_component: bool = False, **kwargs) -> CaseReview:
    """:func:`review_from_maps` of the probabilities ``[K, D, H, W]`` of one case; with
    ``largest_component`` each class of the label keeps its largest connected component only."""
    prob = _as_numpy(prob)
    label = prob.argmax(axis=0).astype(np.uint8)
    if largest_component:
        from .quality import keep_largest_component

        label = keep_largest_component(label, prob.shape[0])
    return review_from_maps(case, prob.max(axis=0), label, **kwargs)
