"""Reading volumes: size and header checks before any voxel is allocated, images, labels checked
against their image, headers, Slicer segmentations."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import SimpleITK as sitk

from ..errors import SFRError
from .volume import DIRECTION_ATOL, ORIGIN_ATOL_MM, SPACING_RTOL, VOLUME_SUFFIXES, Volume, volume_suffix



#: Largest volume the engine reads, in voxels (2 GiB as float32), checked from the header before
#: any voxel is allocated; ``SFR_MAX_VOXELS`` raises or lowers it.
VOXEL_BUDGET = 2**29


def voxel_budget() -> int:
    try:
        return int(os.environ.get("SFR_MAX_VOXELS", VOXEL_BUDGET))
    except ValueError:
        return VOXEL_BUDGET


def _check_file(path: Path) -> None:
    """A readable, non-empty file (not a folder), else SFRError naming it."""
    if not path.exists():
        raise SFRError("file not found", path)
    if path.is_dir():
        raise SFRError("is a folder, expected a volume file", path)
    if not os.access(path, os.R_OK):
        raise SFRError("cannot read the file (no read permission)", path)
    if path.stat().st_size == 0:
        raise SFRError("the file is empty (0 bytes)", path)


def _check_budget(path: Path) -> None:
    """Refuse a volume whose header announces more voxels than :func:`voxel_budget`."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return  # unreadable: the full read says why
    voxels = int(np.prod([int(s) for s in reader.GetSize()], dtype=np.float64)) * max(1, reader.GetNumberOfComponents())
    if voxels > voxel_budget():
        raise SFRError(
            f"volume of {list(reader.GetSize())} voxels ({voxels / 1e6:.0f} M) is larger than the budget of "
            f"{voxel_budget() / 1e6:.0f} M voxels (set SFR_MAX_VOXELS to raise it, or crop/resample the volume)",
            path,
        )


def _check_direction(direction, path: Path) -> None:
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    if not np.allclose(d @ d.T, np.eye(3), atol=1e-3):
        raise SFRError(
            "the direction matrix is not orthonormal (a sheared or scaled grid the engine cannot keep); "
            "resample the volume onto an orthogonal grid",
            path,
        )


def _read_sitk(path: Path) -> sitk.Image:
    _check_file(path)
    if volume_suffix(path) is None:
        raise SFRError(
            "unsupported file type (expected " + ", ".join(VOLUME_SUFFIXES) + ")", path
        )
    _check_budget(path)
    if volume_suffix(path) in (".nii", ".nii.gz"):
        _nifti_raw_check(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:  # SimpleITK reports unreadable/truncated files this way
        detail = str(exc).strip().splitlines()
        reason = next((ln.strip() for ln in detail if "rror" in ln or "annot" in ln), "")
        raise SFRError(
            "cannot read volume (unreadable, truncated or not an image)"
            + (f": {reason[:160]}" if reason else ""),
            path,
        ) from None


_NIFTI_FLOAT = {16: "f4", 64: "f8"}
_NIFTI_BITS = {2: 8, 4: 16, 8: 32, 16: 32, 32: 64, 64: 64, 128: 24, 256: 8, 512: 16, 768: 32,
               1024: 64, 1280: 64, 1536: 128, 1792: 128, 2048: 256, 2304: 32}


def _nifti_raw_check(path: Path) -> None:
    """Check a NIfTI file is complete and its float voxels finite.

    ITK's NIfTI reader silently zero-fills a truncated file and turns NaN into 0, so both are
    checked on the raw bytes (NIfTI-1 and NIfTI-2, either byte order).
    """
    import gzip
    import struct
    import zlib

    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                data = fh.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error):
        raise SFRError("cannot read volume: the file is truncated or corrupt", path) from None
    if len(data) < 348:
        raise SFRError("cannot read volume: the NIfTI header is truncated", path)
    for endian in "<>":
        size = struct.unpack(endian + "i", data[:4])[0]
        if size in (348, 540):
            break
    else:
        raise SFRError("cannot read volume: not a NIfTI header", path)
    if size == 348:
        dims = struct.unpack(endian + "8h", data[40:56])
        dtype_code, bitpix = struct.unpack(endian + "2h", data[70:74])
        offset = int(struct.unpack(endian + "f", data[108:112])[0])
    else:
        dtype_code, bitpix = struct.unpack(endian + "2h", data[12:16])
        dims = struct.unpack(endian + "8q", data[16:80])
        offset = int(struct.unpack(endian + "q", data[168:176])[0])
    ndim = max(1, min(7, int(dims[0])))
    count = int(np.prod([max(1, int(d)) for d in dims[1 : ndim + 1]]))
    nbytes = count * _NIFTI_BITS.get(int(dtype_code), int(bitpix)) // 8
    if len(data) < offset + nbytes:
        raise SFRError(
            f"cannot read volume: the file is truncated ({len(data) - offset} of {nbytes} "
            "data bytes present)",
            path,
        )
    kind = _NIFTI_FLOAT.get(int(dtype_code))
    if kind is not None:
        raw = np.frombuffer(data, dtype=endian + kind, count=count, offset=offset)
        bad = int((~np.isfinite(raw)).sum())
        if bad:
            raise SFRError(f"contains {bad} NaN or Inf voxels", path)


def _check_3d(image: sitk.Image, path: Path) -> None:
    dim = image.GetDimension()
    if dim != 3:
        raise SFRError(f"expected a 3D volume, got a {dim}D image", path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise SFRError(
            f"expected a scalar volume, got {image.GetNumberOfComponentsPerPixel()} "
            "components per voxel (a 4D or vector image)",
            path,
        )
    if min(image.GetSize()) < 1:
        raise SFRError(f"empty volume of size {image.GetSize()}", path)
    _check_direction(image.GetDirection(), path)


def read_image(path: "str | os.PathLike", dtype=np.float32) -> Volume:
    """Read an intensity volume, checking it is 3D, scalar and finite."""
    path = Path(path)
    if volume_suffix(path) == ".seg.nrrd":
        raise SFRError("is a segmentation, expected an image volume", path)
    image = _read_sitk(path)
    _check_3d(image, path)
    vol = Volume.from_sitk(image, str(path))
    vol.array = vol.array.astype(dtype, copy=False)
    if not np.isfinite(vol.array).all():
        bad = int((~np.isfinite(vol.array)).sum())
        raise SFRError(f"contains {bad} NaN or Inf voxels", path)
    return vol


def read_label(
    path: "str | os.PathLike",
    reference: "Volume | None" = None,
    num_classes: int | None = None,
    sparse: bool = False,
) -> Volume:
    """Read a label map as ``uint8``/``int16`` integers.

    ``reference`` (the case's image) is checked to have the same geometry; ``num_classes``
    (background included) bounds the allowed values to ``0..num_classes-1``, plus 255 ("not
    annotated", :mod:`SFRSegmenterLib.sparse`) when ``sparse`` (the label of a labeled case).
    """
    path = Path(path)
    if volume_suffix(path) == ".seg.nrrd":
        vol = read_segmentation(path)
    else:
        image = _read_sitk(path)
        _check_3d(image, path)
        vol = Volume.from_sitk(image, str(path))
    arr = vol.array
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise SFRError("label contains NaN or Inf values", path)
        rounded = np.rint(arr)
        if not np.array_equal(rounded, arr):
            example = float(arr[rounded != arr].flat[0])
            raise SFRError(f"label has non-integer values (e.g. {example:g})", path)
        arr = rounded
    elif arr.dtype.kind not in "iub":
        raise SFRError(f"label has unsupported voxel type {arr.dtype}", path)
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if lo < 0:
        raise SFRError(f"label has negative value {lo}", path)
    if num_classes is not None and hi >= num_classes:
        from ..sparse import NOT_ANNOTATED, describe_values, stray_values

        values = np.unique(arr)
        stray = stray_values(values, num_classes) if sparse else [int(v) for v in values if v >= num_classes]
        if stray:
            also = f" and {NOT_ANNOTATED} (not annotated)" if sparse else ""
            raise SFRError(
                f"label values {describe_values(stray)} are outside the declared classes 0..{num_classes - 1}{also}", path
            )
    if hi > np.iinfo(np.int16).max:
        raise SFRError(f"label value {hi} is too large (at most {np.iinfo(np.int16).max} classes)", path)
    vol.array = arr.astype(np.uint8 if hi < 256 else np.int16, copy=False)
    if reference is not None:
        check_same_geometry(reference, vol, path)
    return vol


def check_same_geometry(image: Volume, label: Volume, label_path=None) -> None:
    """Raise :class:`SFRError` when ``label`` does not lie on ``image``'s voxel grid."""
    where = label_path or label.path
    ref = f" of image {image.path}" if image.path else ""
    if image.shape != label.shape:
        raise SFRError(
            f"label size {list(label.shape[::-1])} differs from the size "
            f"{list(image.shape[::-1])}{ref} (x, y, z)",
            where,
        )
    if not np.allclose(label.spacing, image.spacing, rtol=SPACING_RTOL, atol=0):
        raise SFRError(
            f"label spacing {_fmt(label.spacing)} differs from {_fmt(image.spacing)}{ref}", where
        )
    if not np.allclose(label.origin, image.origin, rtol=0, atol=ORIGIN_ATOL_MM):
        raise SFRError(
            f"label origin {_fmt(label.origin)} differs from {_fmt(image.origin)}{ref}", where
        )
    if not np.allclose(label.direction, image.direction, rtol=0, atol=DIRECTION_ATOL):
        raise SFRError(
            f"label direction {_fmt(label.direction)} differs from "
            f"{_fmt(image.direction)}{ref}",
            where,
        )


def _fmt(values: Iterable[float]) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in values) + "]"


def read_header(path: "str | os.PathLike") -> dict:
    """Size, spacing, origin, direction of a volume without reading its voxels."""
    path = Path(path)
    if volume_suffix(path) == ".seg.nrrd":
        vol = read_segmentation(path)
        return vol.geometry()
    _check_file(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise SFRError("cannot read volume header (unreadable or not an image)", path) from None
    dim = reader.GetDimension()
    if dim != 3:
        raise SFRError(f"expected a 3D volume, got a {dim}D image", path)
    if reader.GetNumberOfComponents() != 1:
        raise SFRError(
            f"expected a scalar volume, got {reader.GetNumberOfComponents()} components per voxel",
            path,
        )
    _check_direction(reader.GetDirection(), path)
    return {
        "size_xyz": list(reader.GetSize()),
        "spacing": list(reader.GetSpacing()),
        "origin": list(reader.GetOrigin()),
        "direction": list(reader.GetDirection()),
    }


def read_segmentation(path: "str | os.PathLike") -> Volume:
    """Read a Slicer ``.seg.nrrd`` into one label map (segment label values kept).

    Overlapping segments stored in several layers (slicerio gives them as ``(layer, i, j, k)``)
    are flattened in segment order (a later segment wins), which is what Slicer's "export to
    labelmap" does; when label values repeat across layers, the segments are numbered 1..N in
    their order instead.
    """
    import slicerio

    path = Path(path)
    _check_file(path)
    _check_budget(path)
    try:
        seg = slicerio.read_segmentation(str(path))
    except Exception as exc:  # slicerio raises plain exceptions on malformed headers
        raise SFRError(f"cannot read segmentation: {exc}".splitlines()[0][:200], path) from None
    voxels = np.asarray(seg["voxels"])
    ijk_to_lps = np.asarray(seg["ijkToLPS"], dtype=float)
    segments = seg.get("segments", [])
    values = [int(s["labelValue"]) for s in segments]
    if voxels.ndim == 4:
        voxels, values = _flatten_layers(voxels, segments, values, path)
    if voxels.ndim != 3:
        raise SFRError(f"expected a 3D segmentation, got {voxels.ndim}D", path)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    direction = ijk_to_lps[:3, :3] / spacing[None, :]
    array = np.ascontiguousarray(np.transpose(voxels, (2, 1, 0)))  # (i,j,k) -> [z,y,x]
    names = {v: s.get("name", f"segment {v}") for s, v in zip(segments, values)}
    return Volume(
        array,
        tuple(float(s) for s in spacing),
        tuple(float(v) for v in ijk_to_lps[:3, 3]),
        tuple(float(v) for v in direction.reshape(-1)),
        str(path),
        names,
    )


def _flatten_layers(voxels: np.ndarray, segments: list, values: list, path: Path) -> tuple:
    """One ``(i, j, k)`` label map from slicerio's layered ``(layer, i, j, k)`` voxels, and the
    value of each segment in it (see :func:`read_segmentation`)."""
    if len(set(values)) != len(values):  # the same value in two layers: two segments, two values
        values = list(range(1, len(segments) + 1))
    flat = np.zeros(voxels.shape[1:], dtype=np.int16)
    for s, value in zip(segments, values):
        layer = int(s.get("layer", 0))
        if not 0 <= layer < voxels.shape[0]:
            raise SFRError(f"segment {s.get('name')!r} is in layer {layer}, but the file has {voxels.shape[0]} layers",
                           path)
        flat[voxels[layer] == int(s["labelValue"])] = value
    return flat, values
