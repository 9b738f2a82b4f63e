"""What to label next: every unlabeled case ranked by how much labeling it is expected to help.

``review.json`` (of ``sfr run`` and ``sfr review``) carries ``label_next``, a list, best first::

    [{"case": "la_007", "rank": 1, "score": 0.41, "basis": "confidence",
      "reason": "low confidence inside the predicted structure (0.83)"}, ...]

How a case is scored (:func:`rank_cases`), from its review entry only:

* **Expected error** ``e``: ``1 - estimated_dice`` when the entry has an ``estimated_dice``
  (a quality estimate of the prediction); else ``1 - `` the mean of the per-slice confidences
  inside the predicted structure's region (``slice_confidence``, :mod:`.confidence`): the
  confidence where the segmentation is, not the near-certain background.  A case where nothing
  was predicted gets ``e = 1`` (the model may have missed the structure altogether).
* **Implausible size** ``s``: ``|ln(structure / median structure)|`` over the cases, capped at 1:
  a structure much smaller or larger than the others' is often wrong.
* **Diversity**: cases are taken greedily; a case close to one already ranked (in the
  standardised space of log structure size, region confidence and region extent) has its score
  halved at distance 0, so the top of the list does not hold the same kind of case twice.

``score = (e + 0.25 s) * (1 - 0.5 exp(-d))`` with ``d`` the distance to the nearest case ranked
before it.  The numbers are for ordering, not for reading.  Measured (``bench/clinician.py next``,
bench/results/clinician_next_s*.md): the first case against random ones, +1.0 / -1.0 Dice on the
mean of two seeds.  A variant that scores a case by the error of its look-alikes too (greedy
coverage, representativeness) did worse on the same first runs (-4.3 / -2.2;
clinician_next_s*_coverage.md) and was not kept.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

#: Weight of the implausible-size term against the expected error.
SIZE_WEIGHT = 0.25
#: Score kept for a case identical to one already ranked (1 = no diversity term).
DUPLICATE_KEEP = 0.5


def _region_confidence(entry: dict) -> "float | None":
    values = [v for v in entry.get("slice_confidence") or () if v is not None and not _nan(v)]
    return float(np.mean(values)) if values else None


def _nan(v) -> bool:
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return True


def expected_error(entry: dict) -> "tuple[float, str, str]":
    """``(e, basis, reason)`` of one review entry."""
    est = entry.get("estimated_dice")
    if est is not None and not _nan(est):
        return 1.0 - float(est), "estimated_dice", f"estimated Dice {float(est):.2f}"
    if int(entry.get("foreground_voxels", 1) or 0) == 0:
        return 1.0, "confidence", "no structure predicted"
    conf = _region_confidence(entry)
    if conf is None:
        return 1.0 - float(entry.get("confidence", 1.0)), "confidence", "case confidence only"
    return 1.0 - conf, "confidence", f"low confidence inside the predicted structure ({conf:.2f})"


def _features(entries: Sequence[dict]) -> np.ndarray:
    rows = []
    for e in entries:
        size = float(e.get("structure_mm3", e.get("foreground_voxels", 0)) or 0)
        conf = _region_confidence(e)
        extent = sum(1 for v in e.get("slice_confidence") or () if v is not None and not _nan(v))
        rows.append([math.log1p(size), 1.0 if conf is None else conf, float(extent)])
    f = np.asarray(rows, dtype=float).reshape(len(entries), 3)
    spread = f.std(axis=0)
    return (f - f.mean(axis=0)) / np.where(spread > 0, spread, 1.0)


def _size_term(entries: Sequence[dict]) -> np.ndarray:
    sizes = np.asarray([float(e.get("structure_mm3", e.get("foreground_voxels", 0)) or 0) for e in entries])
    positive = sizes[sizes > 0]
    if not len(positive):
        return np.zeros(len(entries))
    med = float(np.median(positive))
    return np.minimum(1.0, np.abs(np.log(np.maximum(sizes, 1e-9) / med)))


def rank_cases(entries: Sequence[dict]) -> list:
    """``label_next`` for review entries (each with ``case``): every case once, best first."""
    entries = list(entries)
    if not entries:
        return []
    errors = [expected_error(e) for e in entries]
    base = np.asarray([err for err, _, _ in errors]) + SIZE_WEIGHT * _size_term(entries)
    feats = _features(entries)
    left = list(range(len(entries)))
    ranked, out = [], []
    while left:
        if ranked:
            dist = np.min(np.linalg.norm(feats[left][:, None] - feats[ranked][None], axis=-1), axis=1)
            scores = base[left] * (1.0 - (1.0 - DUPLICATE_KEEP) * np.exp(-dist))
        else:
            scores = base[left]
        i = left[int(np.argmax(scores))]  # ties: the earlier case
        err, basis, reason = errors[i]
        out.append({"case": entries[i]["case"], "rank": len(out) + 1, "score": round(float(np.max(scores)), 6),
                    "basis": basis, "reason": reason})
        ranked.append(i)
        left.remove(i)
    return out


def read_label_next(run_path) -> list:
    """``label_next`` of a run's (or a review folder's) ``review.json``; [] when it has none."""
    from pathlib import Path

    from .io import read_json

    data = read_json(Path(run_path) / "review.json", "review.json", missing={})
    ranked = data.get("label_next") if isinstance(data, dict) else None
    return [r for r in ranked or [] if isinstance(r, dict) and "case" in r]


def summary(ranked: list, n: int = 3) -> str:
    """One line for a panel or a log: the first ``n`` cases to label next and why."""
    if not ranked:
        return "no unlabeled case to suggest"
    return "label next: " + "; ".join(f"{r['case']} ({r.get('reason', '')})" for r in ranked[:n])
