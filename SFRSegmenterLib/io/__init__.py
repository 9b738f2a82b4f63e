"""Reading and writing volumes with their geometry; the output guard; atomic files.

Formats: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``,
``.mhd``) through SimpleITK, and Slicer segmentations (``.seg.nrrd``) through slicerio.
Arrays follow the engine convention ``[z, y, x]`` (see :mod:`SFRSegmenterLib`); geometry is
kept as SimpleITK reports it, in physical ``(x, y, z)`` order, and written back unchanged.

Modules: :mod:`.volume` (the ``Volume`` type, file endings, case names), :mod:`.read` (reading
and checking), :mod:`.write` (writing volumes), :mod:`.guard` (no writer replaces an input),
:mod:`.outputs` (the ``--out`` rule: replace only what sfr wrote), :mod:`.files` (the one atomic writer, the one JSON reader, checksums).  Every name is importable
from ``SFRSegmenterLib.io`` as before.
"""

from __future__ import annotations

from . import guard as _guard
from .files import _atomic_path, atomic_path, default_file_mode, read_json, sha256_file, write_json_atomic, write_text_atomic
from .guard import (
    _PROTECTED,
    MANIFEST_FILE,
    check_output,
    check_outputs,
    inside,
    protect,
    protect_folder,
    protecting,
)
from .read import (
    VOXEL_BUDGET,
    check_same_geometry,
    read_header,
    read_image,
    read_label,
    read_segmentation,
    voxel_budget,
)
from .volume import (
    DIRECTION_ATOL,
    ORIGIN_ATOL_MM,
    SPACING_RTOL,
    VOLUME_SUFFIXES,
    Volume,
    case_name,
    is_volume_file,
    volume_entry,
    volume_suffix,
)
from .outputs import RECORD_FILE, guard_output
from .write import write_segmentation, write_volume

__all__ = [
    "DIRECTION_ATOL", "MANIFEST_FILE", "RECORD_FILE", "guard_output", "ORIGIN_ATOL_MM", "SPACING_RTOL", "VOLUME_SUFFIXES", "VOXEL_BUDGET", "Volume",
    "atomic_path", "case_name", "check_output", "check_outputs", "check_same_geometry", "default_file_mode", "inside",
    "is_volume_file", "protect", "protect_folder", "protecting", "read_header", "read_image", "read_json", "read_label",
    "read_segmentation", "sha256_file", "volume_entry", "volume_suffix", "voxel_budget", "write_json_atomic",
    "write_segmentation", "write_text_atomic", "write_volume", "_PROTECTED", "_atomic_path",
]


def __getattr__(name):
    if name == "LAST_OUTPUT":  # rebound by every check_output: read it where it lives
        return _guard.LAST_OUTPUT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
