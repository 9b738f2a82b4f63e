"""Training data for re-training: whole volumes cached in memory, crops with spatial augmentation.

* Images are z-scored per volume (``normalize``), the normalisation the model file records and
  inference repeats.
* Labels come from the project (labeled cases); pseudo-labels from stage F's cached whole-volume
  files ``PSEUDO/<case>.nii.gz``, checked against ``PSEUDO/pseudo-labels.json`` so that stale ones
  (older than the SAM model, another project, an image that changed) are refused.
* A crop and its label go through exactly the same spatial operations (:func:`crop_and_augment`):
  pad to at least the crop size, random crop, in-plane rotation by a multiple of 90 degrees and a
  flip.  All randomness comes from a generator seeded by (seed, iteration, stream, slot), so the
  same global batch is drawn whatever the number of processes and after a resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import SFRError
from ..intensity import zscore
from ..io import read_image, read_json, read_label, sha256_file  # noqa: F401 (sha256_file re-exported)
from ..manifest import Project
from ..project_folders import SAM_MODEL_META
from ..sparse import crop_starts, is_sparse

PSEUDO_INDEX = "pseudo-labels.json"
#: Stream ids that keep labeled and unlabeled draws independent.
LABELED, UNLABELED = 0, 1


#: Per-volume z-score (float32); a constant volume becomes zeros.  The same function as SAM's
#: ``zscore`` preprocessing.
normalize = zscore


@dataclass
class CaseData:
    name: str
    image: np.ndarray  # float32 [D, H, W], normalised
    label: np.ndarray | None = None  # uint8 [D, H, W]: ground truth or pseudo-label




def project_name(project: Project) -> str:
    return project.name or project.root.name


def load_labeled(project: Project) -> list:
    """The labeled cases with their labels (normalised images)."""
    out = []
    for case in project.by_role("labeled"):
        if not case.label:
            raise SFRError(f"labeled case {case.name!r} has no label", project.manifest_path)
        img = read_image(project.image_path(case))
        lab = read_label(project.label_path(case), reference=img, num_classes=project.num_classes, sparse=True)
        out.append(CaseData(case.name, normalize(img.array), lab.array.astype(np.uint8)))
    if not out:
        raise SFRError("the project has no labeled case to train on", project.manifest_path)
    return out


def select_unlabeled(project: Project, names: "Sequence[str] | None") -> list:
    cases = project.by_role("unlabeled")
    if names is None:
        return cases
    by_name = {c.name: c for c in cases}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise SFRError(f"not unlabeled cases of the project: {', '.join(missing)}", project.manifest_path)
    return [by_name[n] for n in names]


def check_pseudo_index(project: Project, pseudo_dir: Path, case_names: Sequence[str],
                       sam_model_dir: "Path | None" = None) -> dict:
    """Validate ``pseudo-labels.json`` for ``case_names``; return {case: pseudo-label path}.

    ``sam_model_dir`` is the SAM model the pseudo-labels must come from (its ``sam-model.json``
    must exist); None checks only the project and the files (the caller names the model: ``sfr
    retrain`` passes ``PROJECT/models/sam`` when a model is there, ``sfr run`` its own stage F).
    Raises :class:`SFRError` naming the stale or missing file.
    """
    pseudo_dir = Path(pseudo_dir)
    index_path = pseudo_dir / PSEUDO_INDEX
    if not index_path.exists():
        raise SFRError(
            f"no {PSEUDO_INDEX}: make SAM pseudo-labels first ('sfr pseudolabel') or train with --no-sam",
            pseudo_dir,
        )
    index = read_json(index_path, damaged=None)
    entries = index.get("cases") if isinstance(index, dict) else None
    if not isinstance(entries, dict):
        raise SFRError("not a valid pseudo-label index (expected JSON with 'cases')", index_path)
    name = project_name(project)
    if index.get("project") != name:
        raise SFRError(
            f"stale pseudo-labels: made for project {index.get('project')!r}, not {name!r}", index_path
        )
    meta_path = meta_mtime = None
    if sam_model_dir is not None:
        meta_path = Path(sam_model_dir) / SAM_MODEL_META
        if not meta_path.exists():
            raise SFRError("the SAM model that should have made the pseudo-labels has no metadata", meta_path)
        meta = read_json(meta_path, "SAM model metadata")
        meta_mtime = meta_path.stat().st_mtime
        if meta.get("model_id") != index.get("model_id"):
            raise SFRError(
                f"stale pseudo-labels: made by SAM model {index.get('model_id')!r}, the expected SAM model "
                f"is now {meta.get('model_id')!r}; run 'sfr pseudolabel' again",
                index_path,
            )
        recorded = index.get("model_metadata_mtime")
        if not isinstance(recorded, (int, float)) or meta_mtime > float(recorded) + 1e-3:
            raise SFRError(
                "stale pseudo-labels: the SAM model was saved again after they were made "
                f"({meta_path}); run 'sfr pseudolabel' again",
                index_path,
            )
    paths = {}
    for case_name in case_names:
        entry = entries.get(case_name)
        if not isinstance(entry, dict) or "label" not in entry:
            raise SFRError(f"no pseudo-label for unlabeled case {case_name!r}", index_path)
        label_path = pseudo_dir / entry["label"]
        if not label_path.exists():
            raise SFRError(f"pseudo-label of case {case_name!r} is missing", label_path)
        if meta_mtime is not None and label_path.stat().st_mtime + 1e-3 < meta_mtime:
            raise SFRError(
                f"stale pseudo-label: older than the SAM model ({meta_path}); run 'sfr pseudolabel' again",
                label_path,
            )
        paths[case_name] = (label_path, entry.get("image_sha256"))
    return paths


def load_unlabeled(
    project: Project, cases: list, pseudo_dir: "Path | None", with_pseudo: bool,
    sam_model_dir: "Path | None" = None,
) -> list:
    """Unlabeled cases (normalised images) with their pseudo-labels when ``with_pseudo``, checked
    against the SAM model in ``sam_model_dir`` (:func:`check_pseudo_index`)."""
    checked = (check_pseudo_index(project, pseudo_dir, [c.name for c in cases], sam_model_dir)
               if with_pseudo else {})
    out = []
    for case in cases:
        image_path = project.image_path(case)
        img = read_image(image_path)
        label = None
        if with_pseudo:
            label_path, sha = checked[case.name]
            if sha != sha256_file(image_path):
                raise SFRError(
                    f"stale pseudo-label: the image {image_path} changed since it was made "
                    "(sha256 differs); run 'sfr pseudolabel' again",
                    label_path,
                )
            label = read_label(label_path, reference=img, num_classes=project.num_classes).array.astype(np.uint8)
        out.append(CaseData(case.name, normalize(img.array), label))
    return out


def load_with_labels(project: Project, cases: list, label_files: dict) -> list:
    """Unlabeled cases (normalised images) with the labels in ``{case: label file}``, checked
    against the image's grid and the project's classes."""
    out = []
    for case in cases:
        img = read_image(project.image_path(case))
        label = read_label(label_files[case.name], reference=img, num_classes=project.num_classes)
        out.append(CaseData(case.name, normalize(img.array), label.array.astype(np.uint8)))
    return out


# --------------------------------------------------------------------------- crops


def auto_crop(shapes: Sequence[Sequence[int]], default=(80, 112, 112), multiple: int = 16) -> tuple:
    """The default crop, shrunk for small volumes: per axis min(default, median size rounded
    down to ``multiple``), at least ``multiple``.  Volumes smaller than the crop are padded."""
    med = np.median(np.asarray(shapes, dtype=float), axis=0)
    return tuple(int(max(multiple, min(d, (int(m) // multiple) * multiple))) for d, m in zip(default, med))


def check_crop(crop: Sequence[int], multiple: int = 16) -> tuple:
    crop = tuple(int(c) for c in crop)
    if len(crop) != 3 or any(c < multiple or c % multiple for c in crop):
        raise SFRError(f"crop {list(crop)} (D H W) must be three multiples of {multiple}")
    return crop


def slot_rng(seed: int, iteration: int, stream: int, slot: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(iteration), int(stream), int(slot)])


def crop_and_augment(arrays: Sequence[np.ndarray], crop: Sequence[int], rng: np.random.Generator, augment: str = "rotflip"):
    """Apply one random spatial transform to every array in ``arrays`` (same shape ``[D, H, W]``).

    Pads (zeros, symmetric) up to ``crop``, takes a random ``crop``, then for ``rotflip`` rotates
    the in-plane axes by k*90 degrees (k in 0..3 for square crops, 0 or 2 otherwise) and flips one
    in-plane axis with probability 1/2.
    """
    shape = arrays[0].shape
    for a in arrays[1:]:
        if a.shape != shape:
            raise ValueError(f"arrays differ in shape: {a.shape} vs {shape}")
    pads = [(max(0, c - s) // 2, max(0, c - s) - max(0, c - s) // 2) for c, s in zip(crop, shape)]
    if any(p != (0, 0) for p in pads):
        arrays = [np.pad(a, pads, mode="constant") for a in arrays]
        shape = arrays[0].shape
    # a crop holding annotation when the label (second array) is sparse; any start otherwise
    starts = (crop_starts(arrays[1], crop, rng) if len(arrays) > 1 and is_sparse(arrays[1])
              else [int(rng.integers(0, s - c + 1)) for s, c in zip(shape, crop)])
    sl = tuple(slice(st, st + c) for st, c in zip(starts, crop))
    out = [a[sl] for a in arrays]
    if augment == "rotflip":
        k = int(rng.integers(0, 4)) if crop[1] == crop[2] else 2 * int(rng.integers(0, 2))
        flip_axis = 1 + int(rng.integers(0, 2))
        do_flip = bool(rng.integers(0, 2))
        out = [np.rot90(a, k, axes=(1, 2)) for a in out]
        if do_flip:
            out = [np.flip(a, axis=flip_axis) for a in out]
    elif augment != "crop":
        raise ValueError(f"unknown augmentation {augment!r} (rotflip or crop)")
    return [np.ascontiguousarray(a) for a in out]


def make_batch(cases: list, slots: Sequence[int], crop, seed: int, iteration: int, stream: int, augment: str):
    """Images ``[B, 1, D, H, W]`` float32 and labels ``[B, D, H, W]`` int64 (or None) for ``slots``."""
    xs, ys = [], []
    for slot in slots:
        rng = slot_rng(seed, iteration, stream, slot)
        case = cases[int(rng.integers(0, len(cases)))]
        arrays = [case.image] + ([case.label] if case.label is not None else [])
        res = crop_and_augment(arrays, crop, rng, augment)
        xs.append(res[0][None])
        if case.label is not None:
            ys.append(res[1].astype(np.int64))
    x = np.stack(xs)
    y = np.stack(ys) if len(ys) == len(xs) else None
    return x, y
