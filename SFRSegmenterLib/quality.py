"""How good is a case's segmentation when nobody has labeled it?  Signals and the estimate.

The confidence stage of a run measures, per case and per foreground class ``k`` (pure arrays, so
the same numbers come from a run folder's saved maps):

* ``agreement``: Dice between the V-Net's label and SAM's pseudo-label of the case.  The two
  models were trained differently (2D mosaics vs 3D crops) and make different mistakes; where both
  agree the structure is usually right, where they part one of them is wrong.
* ``structure_confidence``: the V-Net's mean voxel confidence (max softmax) over the voxels it
  labels ``k``.  The case confidence of Eq. 8 averages over the whole volume, which is mostly sure
  background, and saturates near 1 (0.989-0.992 on the demo for Dice 0.52-0.81); inside the
  structure the number moves.
* ``size_ratio``: the predicted structure's physical volume over the median labeled one.

:func:`estimate` turns them into an ``estimated_dice`` per class and per case (the mean over the
classes) with a :class:`Calibration`: a clipped linear map of the signals.  Its default
coefficients were fitted on benchmark runs (``bench/sfr_plus_product.py --fit``; the fit and its
error on held-out runs: ``bench/results/quality_estimate.md``); :func:`fit_calibration` fits them
from (signals, true Dice) rows.  A run does not refit them on its own project (that would need SAM
pseudo-labels of labeled cases it did not train on).  A case without signals (no SAM
pseudo-label) has no estimate; the trust rules then fall back to the paper's (:mod:`.sfrplus`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

#: The signals of one class, in the order the calibration weighs them.
SIGNALS = ("agreement", "structure_confidence", "size_error")
#: Fewest (case, class) rows a calibration is fitted on.
MIN_CALIBRATION = 4


# --------------------------------------------------------------------------- post-processing


def keep_largest_component(label: np.ndarray, num_classes: int) -> np.ndarray:
    """Each foreground class reduced to its largest 26-connected component; the removed voxels
    become background.  For classes that are one structure (an atrium, a hippocampus part):
    stray islands are what the distance metrics punish most."""
    label = np.asarray(label)
    out = label.copy()
    structure = np.ones((3, 3, 3), dtype=bool)
    for k in range(1, int(num_classes)):
        mask = label == k
        if not mask.any():
            continue
        comps, n = ndimage.label(mask, structure=structure)
        if n <= 1:
            continue
        sizes = np.bincount(comps.ravel())
        sizes[0] = 0
        out[mask & (comps != int(sizes.argmax()))] = 0
    return out


# --------------------------------------------------------------------------- signals


def _dice(a: np.ndarray, b: np.ndarray, expected: bool) -> float:
    """Dice of two masks; two empty masks agree (1) unless a structure was ``expected`` there:
    then both models missed it (0)."""
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 0.0 if expected else 1.0
    return 2.0 * int(np.count_nonzero(a & b)) / total


def class_signals(label: np.ndarray, conf: np.ndarray, sam_label: "np.ndarray | None", voxel_mm3: float,
                  labeled_mm3: "list | None", num_classes: int) -> dict:
    """``{signal: [value per foreground class]}`` for one case (see the module docstring).

    ``labeled_mm3[k - 1]`` is the median labeled volume of class ``k`` (mm^3); ``sam_label`` None
    leaves ``agreement`` out."""
    label = np.asarray(label)
    conf = np.asarray(conf, dtype=np.float32)
    out = {"structure_confidence": [], "size_ratio": []}
    if sam_label is not None:
        out["agreement"] = []
        sam_label = np.asarray(sam_label)
    for k in range(1, int(num_classes)):
        mask = label == k
        n = int(mask.sum())
        out["structure_confidence"].append(round(float(conf[mask].mean(dtype=np.float64)), 6) if n else 0.0)
        ref = labeled_mm3[k - 1] if labeled_mm3 and k - 1 < len(labeled_mm3) else None
        out["size_ratio"].append(round(n * float(voxel_mm3) / float(ref), 6) if ref else None)
        if sam_label is not None:
            out["agreement"].append(round(_dice(mask, sam_label == k, bool(ref)), 6))
    return out


def _features(signals: dict, k: int) -> "np.ndarray | None":
    """The calibration's inputs for class index ``k`` (0-based), or None when a signal is missing."""
    agree = (signals.get("agreement") or [None] * (k + 1))[k]
    conf = signals["structure_confidence"][k]
    ratio = signals["size_ratio"][k]
    if agree is None or conf is None:
        return None
    size_error = min(abs(float(np.log(ratio))), 3.0) if ratio else 3.0
    return np.array([agree, conf, size_error], dtype=np.float64)


@dataclass(frozen=True)
class Calibration:
    """``estimated_dice = clip(intercept + sum(weight_i * signal_i), 0, 1)`` per class."""

    intercept: float
    weights: tuple  # one per SIGNALS entry
    source: str  # where the coefficients came from (the report says it)

    def predict(self, features: np.ndarray) -> float:
        return float(np.clip(self.intercept + float(np.dot(self.weights, features)), 0.0, 1.0))

    def to_json(self) -> dict:
        return {**asdict(self), "weights": list(self.weights), "signals": list(SIGNALS)}


#: Agreement alone, slope 1: what the estimate is before any fit (kept for reference and tests).
AGREEMENT_ONLY = Calibration(0.0, (1.0, 0.0, 0.0), "agreement between the V-Net and SAM, unfitted")
#: The default: least squares of the true per-class Dice on the three signals over the (case, class)
#: rows of both rounds of two ``sfr demo`` runs (seeds 1337 and 1, hippocampus, agreement-only trust;
#: bench/results/quality_estimate.md).  Scored on the run left out: Spearman 0.68-0.70 and mean
#: absolute error 3.8-4.3 points per class, against 0.25-0.38 and 7.5-10.1 for agreement alone.
DEFAULT = Calibration(0.087195, (0.252681, 0.513106, -0.267505),
                      "fitted on two sfr demo runs (hippocampus; bench/results/quality_estimate.md)")


def estimate(signals: "dict | None", calibration: Calibration = DEFAULT) -> "dict | None":
    """``{"estimated_dice": case estimate, "estimated_dice_per_class": [...]}``, or None when the
    case lacks a signal the calibration needs."""
    if not signals or "structure_confidence" not in signals:
        return None
    per_class = []
    for k in range(len(signals["structure_confidence"])):
        x = _features(signals, k)
        if x is None:
            return None
        per_class.append(round(calibration.predict(x), 6))
    if not per_class:
        return None
    return {"estimated_dice": round(float(np.mean(per_class)), 6), "estimated_dice_per_class": per_class}


def with_estimates(entries: dict, calibration: Calibration = DEFAULT) -> dict:
    """``{case: entry}`` of a confidence stage with each entry's ``estimated_dice`` (and per class)
    by ``calibration``; None where the case lacks a signal."""
    out = {}
    for c, e in entries.items():
        est = estimate(e.get("signals"), calibration)
        out[c] = {**e, **(est or {"estimated_dice": None})}
    return out


def fit_calibration(rows: list, source: str, ridge: float = 1e-3, weights: "list | None" = None) -> "Calibration | None":
    """Least squares (a little ridge) of true Dice on the signals: ``rows`` = [(signals, [true Dice
    per class])].  ``weights`` (one per row, default 1) weigh each row's classes, so that a dataset
    with many cases does not outvote one with few.  None when fewer than :data:`MIN_CALIBRATION`
    usable class rows."""
    xs, ys, ws = [], [], []
    for i, (signals, truth) in enumerate(rows):
        w = 1.0 if weights is None else float(weights[i])
        for k, y in enumerate(truth):
            x = _features(signals, k) if y is not None else None
            if x is not None and w > 0:
                xs.append(x)
                ys.append(float(y))
                ws.append(w)
    if len(xs) < MIN_CALIBRATION:
        return None
    x = np.column_stack([np.ones(len(xs)), np.array(xs)])
    w = np.array(ws)  # a row of weight 2 counts as that row twice
    reg = ridge * np.eye(x.shape[1])
    reg[0, 0] = 0.0
    coef = np.linalg.solve(x.T @ (w[:, None] * x) + reg, x.T @ (w * np.array(ys)))
    return Calibration(round(float(coef[0]), 6), tuple(round(float(c), 6) for c in coef[1:]), source)


# --------------------------------------------------------------------------- how good is it


def spearman(a, b) -> "float | None":
    """Spearman rank correlation (average ranks for ties); None for fewer than 3 pairs or no spread."""
    from scipy.stats import spearmanr

    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    if len(pairs) < 3:
        return None
    xs, ys = zip(*pairs)
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return round(float(spearmanr(xs, ys).statistic), 4)


def accuracy(estimates, truths) -> dict:
    """Spearman and mean absolute error of estimates against true Dice (pairs with both known)."""
    pairs = [(e, t) for e, t in zip(estimates, truths) if e is not None and t is not None]
    out = {"cases": len(pairs), "spearman": spearman(*zip(*pairs)) if pairs else None, "mae": None}
    if pairs:
        out["mae"] = round(float(np.mean([abs(e - t) for e, t in pairs])), 4)
    return out


__all__ = ["SIGNALS", "MIN_CALIBRATION", "keep_largest_component", "class_signals", "Calibration", "AGREEMENT_ONLY",
           "DEFAULT", "estimate", "with_estimates", "fit_calibration", "spearman", "accuracy"]
