"""Volumes with their geometry: the ``Volume`` type, the file endings the engine reads, case names."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import SFRError

# ITK prints its own warnings (e.g. a NIfTI qform/sform note) on stderr: the engine reports
# problems itself, one line each, so they are not shown
sitk.ProcessObject.SetGlobalWarningDisplay(False)

#: File name endings the engine reads, longest first so ``.seg.nrrd`` wins over ``.nrrd``.
VOLUME_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

#: Geometry tolerances used to decide that a label belongs to an image.
SPACING_RTOL = 1e-4
ORIGIN_ATOL_MM = 1e-3
DIRECTION_ATOL = 1e-4


def volume_suffix(path: "str | os.PathLike") -> str | None:
    """The recognised suffix of ``path`` (``".nii.gz"``, ...), or None."""
    name = os.fspath(path).lower()
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return None


def case_name(path: "str | os.PathLike") -> str:
    """The case name of a volume file: its file name without the volume suffix."""
    base = os.path.basename(os.fspath(path))
    suffix = volume_suffix(base)
    return base[: -len(suffix)] if suffix else base


def is_volume_file(path: "str | os.PathLike") -> bool:
    p = Path(path)
    return p.is_file() and volume_suffix(p) is not None and not p.name.startswith(".")


def volume_entry(path: "str | os.PathLike") -> bool:
    """Whether an entry of a scanned folder is a volume to read (other files are skipped).

    An entry named like a volume that is a folder, or a broken or looping link, is refused with
    one line naming it (it is surely meant as a volume: skipping it silently would drop a case)."""
    p = Path(path)
    if is_volume_file(p):
        return True
    if volume_suffix(p) is not None and not p.name.startswith("."):
        what = "a folder" if p.is_dir() else "a broken or looping link" if p.is_symlink() else "not a regular file"
        raise SFRError(f"named like a volume but is {what}; rename or remove it", p)
    return False


@dataclass
class Volume:
    """A 3D array ``[z, y, x]`` with its physical geometry (ITK order ``(x, y, z)``)."""

    array: np.ndarray
    spacing: tuple = (1.0, 1.0, 1.0)
    origin: tuple = (0.0, 0.0, 0.0)
    direction: tuple = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    path: str | None = None
    #: Segment names and values when read from a ``.seg.nrrd`` (value -> name).
    segments: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple:
        return tuple(self.array.shape)

    @property
    def spacing_zyx(self) -> tuple:
        """Spacing in array order, for distances computed on the array."""
        return tuple(float(s) for s in self.spacing[::-1])

    def geometry(self) -> dict:
        return {
            "size_xyz": [int(s) for s in self.array.shape[::-1]],
            "spacing": [float(s) for s in self.spacing],
            "origin": [float(s) for s in self.origin],
            "direction": [float(s) for s in self.direction],
        }

    def with_array(self, array: np.ndarray) -> "Volume":
        """A new volume with the same geometry and another array of the same shape."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"shape {array.shape} differs from {self.shape}")
        return Volume(array, self.spacing, self.origin, self.direction, None, {})

    def to_sitk(self) -> sitk.Image:
        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        image.SetSpacing([float(s) for s in self.spacing])
        image.SetOrigin([float(s) for s in self.origin])
        image.SetDirection([float(s) for s in self.direction])
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, path: "str | None" = None) -> "Volume":
        return cls(
            sitk.GetArrayFromImage(image),
            tuple(image.GetSpacing()),
            tuple(image.GetOrigin()),
            tuple(image.GetDirection()),
            path,
        )

    def ijk_to_world(self) -> np.ndarray:
        """4x4 matrix mapping voxel index ``(i, j, k) = (x, y, z)`` to LPS millimetres."""
        d = np.asarray(self.direction, dtype=float).reshape(3, 3)
        m = np.eye(4)
        m[:3, :3] = d * np.asarray(self.spacing, dtype=float)[None, :]
        m[:3, 3] = self.origin
        return m

