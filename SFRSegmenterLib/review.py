"""The confidence stage on a folder of images: a re-trained network's probabilities -> review.

For every image this writes, in the image's geometry, ``<case>.nii.gz`` (uint8 label),
``<case>_confidence.nii.gz`` (float32 max softmax) and ``<case>_lowconf.nii.gz`` (uint8
low-confidence mask), and then ``review.json``::

    {"model": "/abs/models/vnet/model.pt", "params": {"tau": 0.985, ...},
     "cases": [{"case", "confidence", "trusted", "estimated_dice", "estimated_dice_per_class",
                "flagged_slices": [{"index", "confidence"}], "low_confidence_voxels",
                "foreground_voxels", "structure_mm3"}],
     "label_next": [{"case", "rank", "score", "basis", "reason"}]}   # .labelnext

one entry schema (:func:`review_record`) for ``sfr review`` and ``sfr run`` (:mod:`.confidence` for
what the measurements mean; ``sfr review`` has no SAM pseudo-label to compare with, so its
``estimated_dice`` is null).  Per-slice confidences go to ``slices.json`` beside it.
Under ``torchrun`` the images are split over the processes (:mod:`.shard`); the main process
writes ``review.json`` once every process has written its cases' files.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np

from . import confidence as conf_mod
from .errors import SFRError
from .labelnext import rank_cases
from .io import Volume, inside, read_image, write_json_atomic, write_volume
from .runfolder import RunFolder

REVIEW_JSON = RunFolder.REVIEW  # the location is the run folder's
SLICES_JSON = "slices.json"
#: The files written per case, after the case name.
CASE_SUFFIXES = (".nii.gz", "_confidence.nii.gz", "_lowconf.nii.gz")


def check_params(tau: float, k: int, voxel_threshold: float, ranking: str, min_structure_mm3: float) -> None:
    """One line naming the option for a review setting out of range."""
    if not 0 < tau <= 1:
        raise SFRError(f"--tau must be in (0, 1], got {tau}")
    if k < 0:
        raise SFRError(f"--flag-k must be >= 0, got {k}")
    if not 0 < voxel_threshold <= 1:
        raise SFRError(f"--voxel-threshold must be in (0, 1], got {voxel_threshold}")
    if ranking not in conf_mod.RANKINGS:
        raise SFRError(f"--ranking must be one of {', '.join(conf_mod.RANKINGS)}, got {ranking!r}")
    if min_structure_mm3 < 0:
        raise SFRError(f"--min-structure-mm3 must be >= 0, got {min_structure_mm3}")


#: The keys of a ``review.json`` case entry, in order; the one schema of every writer.
RECORD_KEYS = ("case", "confidence", "trusted", "estimated_dice", "estimated_dice_per_class", "flagged_slices",
               "low_confidence_voxels", "foreground_voxels", "structure_mm3")


def review_record(measurements: dict, trusted: bool) -> dict:
    """A case's ``review.json`` entry from its measurements (:func:`case_measurements`, with the
    estimate when there is one) and the trust decision."""
    entry = {**measurements, "trusted": bool(trusted)}
    entry.setdefault("estimated_dice", None)
    entry.setdefault("estimated_dice_per_class", None)
    return {key: entry.get(key) for key in RECORD_KEYS}


def case_measurements(review: "conf_mod.CaseReview", image: Volume) -> dict:
    """What the review measured of one case (what ``sfr run`` caches; no trust decision): the
    review's numbers, per-slice confidence, the structure's size and the voxel volume (mm^3)."""
    return {**review.to_json(), "slice_confidence": review.slice_confidence,
            "foreground_voxels": review.foreground_voxels,
            "structure_mm3": round(review.foreground_voxels * float(np.prod(image.spacing)), 3),
            "voxel_mm3": float(np.prod(image.spacing))}


def review_image(model, image: Volume, case: str, k: int = conf_mod.FLAG_K,
                 voxel_threshold: float = conf_mod.VOXEL_THRESHOLD, ranking: str = "mass",
                 window=None, stride=None, batch: int = 4, largest_component: bool = False) -> "conf_mod.CaseReview":
    """The review of one image from ``model``'s sliding-window probabilities: label, maps,
    confidence, flagged slices (whether the case is trusted is :mod:`.sfrplus`'s decision)."""
    from .retrain.inference import predict_volume

    prob = predict_volume(model, image.array, window=window, stride=stride, batch=batch)
    return conf_mod.review_case(case, prob, k=k, voxel_threshold=voxel_threshold, ranking=ranking,
                                largest_component=largest_component)


def judged_entry(review: "conf_mod.CaseReview", image: Volume, tau: float, min_structure_mm3: float) -> dict:
    """:func:`case_measurements` with ``trusted`` decided by the paper's trust policy of
    :mod:`.sfrplus` (no SAM pseudo-label here, so no estimate): confidence >= ``tau`` and a
    predicted structure of at least ``min_structure_mm3`` (physical volume)."""
    from .sfrplus import ConfidenceAndSize, TrustContext

    policy = ConfidenceAndSize(tau, 1.0)  # 1.0 x the one reference volume below
    measured = case_measurements(review, image)
    return {**measured, "trusted": policy.trusted(measured, TrustContext((min_structure_mm3,)))}


def write_case_maps(review: "conf_mod.CaseReview", image: Volume, out_dir: Path) -> None:
    """``<case>.nii.gz``, ``<case>_confidence.nii.gz``, ``<case>_lowconf.nii.gz`` in ``image``'s geometry."""
    label, conf, low = (inside(out_dir, f"{review.case}{s}") for s in CASE_SUFFIXES)
    write_volume(image.with_array(review.label.astype(np.uint8)), label)
    write_volume(image.with_array(review.conf.astype(np.float32)), conf)
    write_volume(image.with_array(review.lowconf.astype(np.uint8)), low)


def review_folder(model_dir: "str | os.PathLike", images, out_dir: "str | os.PathLike",
                  tau: float = conf_mod.TAU, k: int = conf_mod.FLAG_K,
                  voxel_threshold: float = conf_mod.VOXEL_THRESHOLD, ranking: str = "mass",
                  min_structure_mm3: float = 0.0, device: str = "auto", window=None, stride=None,
                  batch: int = 4) -> dict:
    """Review every image (a folder or a list of files); returns ``review.json``'s content."""
    from .retrain.inference import case_paths, load_model, refuse_overwriting_inputs
    from .shard import each_case

    check_params(tau, k, voxel_threshold, ranking, min_structure_mm3)
    params = {"tau": tau, "k": k, "voxel_threshold": voxel_threshold, "ranking": ranking,
              "min_structure_mm3": min_structure_mm3}
    paths = case_paths(images)
    out_dir = Path(out_dir)
    refuse_overwriting_inputs(out_dir, paths, CASE_SUFFIXES, paths.values())

    def work(model, name):
        image = read_image(paths[name])
        review = review_image(model, image, name, k=k, voxel_threshold=voxel_threshold, ranking=ranking,
                              window=window, stride=stride, batch=batch)
        write_case_maps(review, image, out_dir)
        return judged_entry(review, image, tau, min_structure_mm3)

    with each_case(paths, device, "confidence", partial(load_model, model_dir), work, out_dir,
                   note=lambda e: {"confidence": e["confidence"]}) as (shard, model, entries):
        result = {"model": str(Path(model.sfr_meta["path"]).resolve()), "params": params,
                  "cases": [review_record(e, e["trusted"]) for e in entries.values()]}
        result["label_next"] = rank_cases(list(entries.values()))  # what to label next (.labelnext)
        if shard.main:
            write_json_atomic(out_dir / REVIEW_JSON, result)
            write_json_atomic(out_dir / SLICES_JSON, {e["case"]: {"slice_confidence": e["slice_confidence"]}
                                                      for e in entries.values()})
        shard.gather(None)  # nobody returns before review.json is written
    return result
