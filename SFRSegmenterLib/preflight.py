"""Everything ``sfr run`` needs, checked before its first stage (and before a run folder exists).

A run spends hours in SAM fine-tuning before the V-Net stage reads its crop, so a bad value or
file found there costs the whole fine-tuning.  :func:`check_run` checks up front:

* every case's image: a readable, non-empty volume file, 3D, scalar, an orthonormal grid, under
  the voxel budget (headers only, no voxels read);
* every labeled case's label: present, readable, on its image's grid, within the classes, and
  not empty (all background); the optional label of an unlabeled or validation case (read for
  the metrics after all training): readable, on its image's grid, within the classes;
* the V-Net crop: multiples of the network's size step, not larger than the largest volume
  (rounded up to that step; a larger crop would only add padding: refused, not clamped), and its
  batch under the voxel budget;
* the project folder is writable and its disk has room for the planned outputs (an estimate).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .errors import SFRError
from .io import read_header, read_image, read_label, voxel_budget
from .manifest import Project, check_label_values

#: Bytes a case's run outputs take per voxel and per pass (label + confidence + low-confidence map,
#: compressed NIfTI), a deliberately high estimate; plus the models and pictures of a run.
BYTES_PER_VOXEL_PASS = 3.0
RUN_FIXED_BYTES = 200 * 2**20


def check_run(project: Project, cfg) -> None:
    """Raise SFRError (one line, naming the file or option) for anything the run would fail on."""
    labeled = project.by_role("labeled")
    unlabeled = project.by_role("unlabeled")
    if not labeled:
        raise SFRError("the project has no labeled case: label at least one", project.manifest_path)
    if not unlabeled:
        raise SFRError("the project has no unlabeled case to segment", project.manifest_path)
    sizes = {}
    for case in project.cases:
        header = read_header(project.image_path(case))
        sizes[case.name] = [int(s) for s in header["size_xyz"][::-1]]  # [z, y, x]
    for case in labeled:
        _check_label(project, case)
    for case in unlabeled + project.by_role("validation"):
        if project.label_path(case) is not None:
            read_label(project.label_path(case), read_image(project.image_path(case)), project.num_classes)
    train = [sizes[c.name] for c in labeled + unlabeled]
    _check_crop(cfg, train)
    _check_writable(project.root)
    _check_disk(project.root, [sizes[c.name] for c in unlabeled + project.by_role("validation")],
                cfg.resolved_rounds)


def _check_label(project: Project, case) -> None:
    label_path = project.label_path(case)
    if label_path is None:
        raise SFRError(f"labeled case {case.name!r} has no label", project.manifest_path)
    image = read_image(project.image_path(case))
    label = read_label(label_path, image, project.num_classes, sparse=True)
    check_label_values(case, label.array, label_path)


def _check_crop(cfg, shapes: list) -> None:
    from .retrain.data import check_crop
    from .retrain.networks import required_multiple

    crop = cfg.crop or cfg.vnet_options.get("crop")
    if not crop:
        return
    network = cfg.vnet_options.get("network") or cfg.network or "vnet"
    try:
        multiple = required_multiple(network)
    except Exception:  # noqa: BLE001 - an unknown network is refused by the stage configuration
        multiple = 16
    crop = check_crop(crop, multiple)
    largest = np.max(np.asarray(shapes), axis=0)
    limit = [int(-(-int(s) // multiple) * multiple) for s in largest]
    if any(c > lim for c, lim in zip(crop, limit)):
        raise SFRError(f"--crop {' '.join(map(str, crop))}: larger than every volume (largest "
                       f"{' '.join(map(str, largest))} D H W); refused rather than clamped: use at most "
                       f"{' '.join(map(str, limit))}")
    batch = int(cfg.vnet_options.get("labeled_bs", 2)) + int(cfg.vnet_options.get("unlabeled_bs", 2))
    if int(np.prod(crop)) * max(1, batch) > voxel_budget():
        raise SFRError(f"--crop {' '.join(map(str, crop))}: a batch of {batch} crops exceeds the voxel budget "
                       f"of {voxel_budget() / 1e6:.0f} M voxels")


def _check_writable(root: Path) -> None:
    target = root / "runs" if (root / "runs").is_dir() else root
    try:
        fd, tmp = tempfile.mkstemp(prefix=".sfr-write-test-", dir=target)
    except OSError as exc:
        raise SFRError(f"cannot write into the project ({exc.strerror or exc}; read-only or no permission?)",
                       target) from None
    os.close(fd)
    os.unlink(tmp)


def _check_disk(root: Path, shapes: list, rounds: int) -> None:
    voxels = sum(int(np.prod(s)) for s in shapes)
    need = int(voxels * BYTES_PER_VOXEL_PASS * (2 * (1 + int(rounds)) + 1)) + RUN_FIXED_BYTES
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        return
    if free < need:
        raise SFRError(f"not enough free disk for the run: about {need / 2**20:.0f} MB needed for its "
                       f"outputs, {free / 2**20:.0f} MB free", root)
