"""Writing volumes (NIfTI, NRRD, MetaImage through SimpleITK; Slicer ``.seg.nrrd`` through
slicerio), atomically and through the output guard."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import SFRError
from .files import atomic_path
from .guard import check_outputs
from .outputs import note_written
from .volume import Volume, case_name, volume_suffix

def write_segmentation(
    label: Volume,
    path: "str | os.PathLike",
    names: "dict[int, str] | None" = None,
    colors: "dict[int, Sequence[float]] | None" = None,
) -> Path:
    """Write a label map as a Slicer ``.seg.nrrd`` (one segment per non-zero value)."""
    import slicerio

    path = Path(path)
    names = names or label.segments or {}
    values = [int(v) for v in np.unique(label.array) if v != 0]
    values = sorted(set(values) | {int(v) for v in names if int(v) != 0})
    default_colors = [(0.5, 0.68, 0.5), (0.95, 0.84, 0.57), (0.69, 0.48, 0.4), (0.43, 0.72, 0.82)]
    segments = []
    for i, v in enumerate(values):
        seg = {
            "id": f"Segment_{v}",
            "labelValue": v,
            "layer": 0,
            "name": names.get(v, f"Segment_{v}"),
            "color": list((colors or {}).get(v, default_colors[i % len(default_colors)])),
        }
        segments.append(seg)
    ijk = label.ijk_to_world()
    segmentation = {
        "voxels": np.ascontiguousarray(np.transpose(label.array, (2, 1, 0))),
        "ijkToLPS": ijk,
        "encoding": "gzip",
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "segments": segments,
    }
    with atomic_path(path) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation)
    return path


def write_volume(vol: Volume, path: "str | os.PathLike", compress: bool = True) -> Path:
    """Write ``vol`` atomically; the format follows the file name's suffix."""
    path = Path(path)
    suffix = volume_suffix(path)
    if suffix is None:
        raise SFRError("unsupported output type (use .nii.gz, .nrrd, .mha, .seg.nrrd, ...)", path)
    if suffix == ".seg.nrrd":
        return write_segmentation(vol, path)
    if suffix in (".nhdr", ".mhd"):  # header + separate data file: write both in place
        data = [path.with_name(case_name(path) + ext) for ext in (".raw", ".raw.gz", ".zraw")]
        check_outputs([path] + data)
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(vol.to_sitk(), str(path), compress)
        for p in [path] + data:
            note_written(p)
        return path
    with atomic_path(path) as tmp:
        sitk.WriteImage(vol.to_sitk(), str(tmp), compress)
    return path
