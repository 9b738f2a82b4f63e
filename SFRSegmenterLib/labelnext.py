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
  a structure much smaller or larger than the others' is often wrong.  A case's error is
  ``err = e + 0.25 s``.
* **Reach**: a label teaches the model about the cases that look like the labeled one, not only
  about itself, and an atypical case (the smallest structure of the set, say) is often the worst
  segmented yet helps the others least.  Likeness is ``k(a, b) = exp(-d^2 / 2)``, ``d`` the
  distance in the standardised space of log structure size, region confidence and region extent.
  A case's score is the error it is expected to remove, its own and its look-alikes':
  ``score(c) = sum_j k(c, j) err_j`` (``k(c, c) = 1``).
* **Greedy, with coverage**: cases are taken best first; once a case is ranked, what the others
  still have to gain shrinks by their likeness to it (``err_j <- err_j (1 - k(c, j))``), so the top
  of the list does not hold the same kind of case twice (facility-location greedy, the
  information-density idea of active learning).

The numbers are for ordering, not for reading.  Measured: ``bench/clinician.py next``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

#: Weight of the implausible-size term against the expected error.
SIZE_WEIGHT = 0.25
#: Likeness of two cases ``exp(-d^2 / (2 LIKENESS_SCALE^2))`` in the standardised feature space.
LIKENESS_SCALE = 1.0
#: Likeness from which a case counts as "close" in the reason line.
CLOSE = 0.5


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


def likeness(entries: Sequence[dict]) -> np.ndarray:
    """``[n, n]``: how much alike each pair of cases looks (1 on the diagonal)."""
    f = _features(entries)
    d2 = ((f[:, None] - f[None]) ** 2).sum(axis=-1)
    return np.exp(-d2 / (2.0 * LIKENESS_SCALE ** 2))


def rank_cases(entries: Sequence[dict]) -> list:
    """``label_next`` for review entries (each with ``case``): every case once, best first."""
    entries = list(entries)
    if not entries:
        return []
    errors = [expected_error(e) for e in entries]
    remaining = np.asarray([err for err, _, _ in errors]) + SIZE_WEIGHT * _size_term(entries)
    alike = likeness(entries)
    left = list(range(len(entries)))
    out = []
    while left:
        scores = alike[left] @ remaining
        best = int(np.argmax(scores))  # ties: the earlier case
        i = left[best]
        _, basis, reason = errors[i]
        close = sum(1 for j in left if j != i and alike[i, j] >= CLOSE)
        if close:
            reason += f"; like {close} other unranked case{'s' if close > 1 else ''}"
        out.append({"case": entries[i]["case"], "rank": len(out) + 1, "score": round(float(scores[best]), 6),
                    "basis": basis, "reason": reason})
        remaining = remaining * (1.0 - alike[i])
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
