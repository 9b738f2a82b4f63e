"""Test data for the re-training tests: small real projects from the bundled hippocampus cases,
with pseudo-labels made from their hidden ground truth (eroded by one voxel) in stage F's format."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from SFRSegmenterLib.io import read_image, read_label, write_volume
from SFRSegmenterLib.manifest import Case, Project, write_json_atomic
from SFRSegmenterLib.retrain.data import PSEUDO_INDEX, sha256_file

SAMPLE = Path(__file__).resolve().parents[1] / "SFRSegmenterLib" / "sample_data" / "hippocampus"


def make_project(root: Path, n_labeled=2, n_unlabeled=3, n_validation=1, binary=True, copy_images=False) -> Project:
    """A project of bundled hippocampus cases (labels merged to one class when ``binary``)."""
    root = Path(root)
    names = sorted(p.name[: -len(".nii.gz")] for p in (SAMPLE / "images").glob("*.nii.gz"))
    names = names[: n_labeled + n_unlabeled + n_validation]
    (root / "labels").mkdir(parents=True, exist_ok=True)
    cases = []
    for i, n in enumerate(names):
        image = SAMPLE / "images" / f"{n}.nii.gz"
        if copy_images:
            (root / "images").mkdir(parents=True, exist_ok=True)
            shutil.copy(image, root / "images" / f"{n}.nii.gz")
            image = root / "images" / f"{n}.nii.gz"
        lab = read_label(SAMPLE / "labels" / f"{n}.nii.gz")
        if binary:
            lab.array = (lab.array > 0).astype(np.uint8)
        write_volume(lab, root / "labels" / f"{n}.nii.gz")
        role = "labeled" if i < n_labeled else ("unlabeled" if i < n_labeled + n_unlabeled else "validation")
        cases.append(Case(n, str(image), f"labels/{n}.nii.gz", role))
    classes = ["background", "hippocampus"] if binary else ["background", "anterior", "posterior"]
    project = Project(root=root, cases=cases, classes=classes, name=root.name)
    project.save()
    return project


def make_pseudo(project: Project, pseudo_dir: Path | None = None, model_id="sam-test-1", write_meta=True) -> Path:
    """Stage F's files for every unlabeled case: eroded ground truth as the pseudo-label."""
    pseudo_dir = Path(pseudo_dir or project.root / "pseudo")
    meta = project.root / "models" / "sam" / "sam-model.json"
    if write_meta:
        write_json_atomic(meta, {"model_id": model_id})
    mtime = meta.stat().st_mtime if meta.exists() else time.time()
    entries = {}
    for case in project.by_role("unlabeled"):
        img = read_image(project.image_path(case))
        gt = read_label(project.label_path(case)).array
        pseudo = np.zeros_like(gt)
        for c in np.unique(gt):
            if c:
                pseudo[ndimage.binary_erosion(gt == c)] = c
        conf = np.where(pseudo > 0, 0.8, 0.97).astype(np.float32)
        write_volume(img.with_array(pseudo.astype(np.uint8)), pseudo_dir / f"{case.name}.nii.gz")
        write_volume(img.with_array(conf), pseudo_dir / f"{case.name}_confidence.nii.gz")
        entries[case.name] = {
            "image": str(project.image_path(case)),
            "image_sha256": sha256_file(project.image_path(case)),
            "label": f"{case.name}.nii.gz",
            "confidence": f"{case.name}_confidence.nii.gz",
        }
    write_json_atomic(
        pseudo_dir / PSEUDO_INDEX,
        {"model_id": model_id, "model_metadata_mtime": mtime, "project": project.name, "cases": entries},
    )
    return pseudo_dir
