"""Reading and writing volumes with their geometry.

Formats: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``,
``.mhd``) through SimpleITK, and Slicer segmentations (``.seg.nrrd``) through slicerio.
Arrays follow the engine convention ``[z, y, x]`` (see :mod:`SFRSegmenterLib`); geometry is
kept as SimpleITK reports it, in physical ``(x, y, z)`` order, and written back unchanged.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import SimpleITK as sitk

from .errors import SFRError

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


# --------------------------------------------------------------------------- checksums

_SHA_CACHE: dict = {}


def sha256_file(path: "str | os.PathLike") -> str:
    """sha256 of a file's contents (remembered per path, size and modification time)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        import hashlib

        digest = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


# --------------------------------------------------------------------------- reading


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
) -> Volume:
    """Read a label map as ``uint8``/``int16`` integers.

    ``reference`` (the case's image) is checked to have the same geometry; ``num_classes``
    (background included) bounds the allowed values to ``0..num_classes-1``.
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
        raise SFRError(
            f"label value {hi} is outside the declared classes 0..{num_classes - 1}", path
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


# --------------------------------------------------------------------------- segmentations


def read_segmentation(path: "str | os.PathLike") -> Volume:
    """Read a Slicer ``.seg.nrrd`` into one label map (segment label values kept).

    Overlapping segments stored in several layers are flattened in segment order (a later
    segment wins), which is what Slicer's "export to labelmap" does.
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
    if voxels.ndim == 4:  # layers along the last axis (i, j, k, layer)
        flat = np.zeros(voxels.shape[:3], dtype=np.int16)
        for s in segments:
            layer = int(s.get("layer", 0))
            flat[voxels[..., layer] == int(s["labelValue"])] = int(s["labelValue"])
        voxels = flat
    if voxels.ndim != 3:
        raise SFRError(f"expected a 3D segmentation, got {voxels.ndim}D", path)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    direction = ijk_to_lps[:3, :3] / spacing[None, :]
    array = np.ascontiguousarray(np.transpose(voxels, (2, 1, 0)))  # (i,j,k) -> [z,y,x]
    names = {int(s["labelValue"]): s.get("name", f"segment {s['labelValue']}") for s in segments}
    return Volume(
        array,
        tuple(float(s) for s in spacing),
        tuple(float(v) for v in ijk_to_lps[:3, 3]),
        tuple(float(v) for v in direction.reshape(-1)),
        str(path),
        names,
    )


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
    with _atomic_path(path) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation)
    return path


# --------------------------------------------------------------------------- output guard
#
# Inputs are sacred: no writer replaces a project's image or label, the project manifest, or a
# file the running command reads.  Every writer of the engine (``atomic_path``, ``write_volume``,
# ``write_json_atomic``) calls :func:`check_output` before it creates anything; commands add the
# files they read with :func:`protect`, and a project's images and labels are protected wherever
# the output lies (the manifest of the folder, or of any folder above it, is consulted).

#: The manifest's file name (defined here so the guard needs no import of ``manifest``).
MANIFEST_FILE = "sfr-project.json"
_PROTECTED: dict = {}
_MANIFEST_CACHE: dict = {}
#: The file the engine's writers were last asked to write (a full disk's error names it).
LAST_OUTPUT: "str | None" = None


def _guard_keys(path: "str | os.PathLike") -> set:
    """The path with its folder resolved, and fully resolved (a symlink and its target)."""
    raw = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(raw)
    return {os.path.normcase(os.path.join(os.path.realpath(parent), name)),
            os.path.normcase(os.path.realpath(raw))}


def protect(paths: "Iterable[str | os.PathLike | None]", why: str) -> None:
    """Mark ``paths`` as inputs of this process: :func:`check_output` refuses to write them."""
    for p in paths:
        if p is not None:
            for key in _guard_keys(p):
                _PROTECTED.setdefault(key, why)


class protecting:
    """``with protecting(paths, why):`` protects ``paths`` only while the block runs (a step of a
    longer process that reads files the process itself writes later, e.g. the report of a run)."""

    def __init__(self, paths, why: str):
        self.keys = {key: why for p in paths if p is not None for key in _guard_keys(p)}

    def __enter__(self):
        self.added = [k for k in self.keys if k not in _PROTECTED]
        for k in self.added:
            _PROTECTED[k] = self.keys[k]
        return self

    def __exit__(self, *exc):
        for k in self.added:
            _PROTECTED.pop(k, None)
        return False


def protect_folder(folder: "str | os.PathLike", why: str) -> None:
    """Protect every volume file directly inside ``folder`` (a command's input folder)."""
    folder = Path(folder)
    if folder.is_dir():
        protect((p for p in folder.iterdir() if volume_suffix(p)), why)
    else:
        protect([folder], why)


def _project_inputs(manifest: Path) -> dict:
    """{guard key: why} for the images and labels a manifest names (cached by mtime)."""
    import json

    try:
        st = manifest.stat()
    except OSError:
        return {}
    stamp = (st.st_mtime_ns, st.st_size)
    cached = _MANIFEST_CACHE.get(str(manifest))
    if cached and cached[0] == stamp:
        return cached[1]
    found: dict = {}
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        for case in data.get("cases", []):
            for field_name in ("image", "label"):
                rel = case.get(field_name)
                if isinstance(rel, str) and rel:
                    p = Path(rel) if os.path.isabs(rel) else manifest.parent / rel
                    what = "image" if field_name == "image" else "label"
                    for key in _guard_keys(p):
                        found.setdefault(key, f"the {what} of case {case.get('name')!r} of project {manifest.parent}")
    except (OSError, ValueError, AttributeError, TypeError):
        found = {}
    for key in _guard_keys(manifest.parent / "runs" / "latest"):
        found[key] = f"the latest-run pointer of project {manifest.parent}"
    _MANIFEST_CACHE[str(manifest)] = (stamp, found)
    return found


def _enclosing_manifests(path: Path):
    seen = set()
    for start in (Path(os.path.abspath(path)).parent, Path(os.path.realpath(path)).parent):
        for folder in (start, *start.parents):
            candidate = folder / MANIFEST_FILE
            if str(candidate) not in seen:
                seen.add(str(candidate))
                if candidate.is_file():
                    yield candidate


def check_output(path: "str | os.PathLike", manifest: bool = False) -> None:
    """Raise :class:`SFRError` naming ``path`` when writing it would replace an input.

    Inputs: files given to :func:`protect`, a project manifest (unless ``manifest``: the
    manifest's own writer), and the images and labels of any project whose folder holds
    ``path``.
    """
    global LAST_OUTPUT
    LAST_OUTPUT = os.fspath(path)
    keys = _guard_keys(path)
    for key in keys:
        if key in _PROTECTED:
            raise SFRError(f"refusing to overwrite {_PROTECTED[key]}; choose another output", path)
    if os.path.basename(os.fspath(path)) == MANIFEST_FILE and not manifest:
        raise SFRError("refusing to overwrite a project manifest; choose another output", path)
    for m in _enclosing_manifests(Path(path)):
        inputs = _project_inputs(m)
        for key in keys:
            if key in inputs:
                raise SFRError(f"refusing to overwrite {inputs[key]}; choose another output", path)


def check_outputs(paths: "Iterable[str | os.PathLike]") -> None:
    """:func:`check_output` for every planned output, before any work starts."""
    for p in paths:
        check_output(p)


def inside(folder: "str | os.PathLike", name: str) -> Path:
    """``folder / name``, refused unless it lies inside ``folder`` (no ``..``, no absolute name)."""
    folder = Path(folder)
    target = folder / name
    base = os.path.normpath(os.path.abspath(folder))
    full = os.path.normpath(os.path.abspath(target))
    if os.path.dirname(full) != base and not full.startswith(base + os.sep):
        raise SFRError(f"output name {name!r} would lie outside its folder {folder}", target)
    if full == base:
        raise SFRError(f"output name {name!r} is not a file name", target)
    return target


# --------------------------------------------------------------------------- writing


class _atomic_path:
    """Context manager yielding a temporary sibling path, renamed onto ``path`` on success."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self) -> Path:
        check_output(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        suffix = volume_suffix(self.path) or self.path.suffix
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=self.path.parent)
        os.close(fd)
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600; keep the usual permissions
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
        return False


def default_file_mode() -> int:
    """The mode a plain ``open(path, 'w')`` would give a new file (0666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_path(path: "str | os.PathLike") -> _atomic_path:
    """``with atomic_path(p) as tmp: write(tmp)`` writes ``p`` all or nothing."""
    return _atomic_path(Path(path))


def write_volume(vol: Volume, path: "str | os.PathLike", compress: bool = True) -> Path:
    """Write ``vol`` atomically; the format follows the file name's suffix."""
    path = Path(path)
    suffix = volume_suffix(path)
    if suffix is None:
        raise SFRError("unsupported output type (use .nii.gz, .nrrd, .mha, .seg.nrrd, ...)", path)
    if suffix == ".seg.nrrd":
        return write_segmentation(vol, path)
    if suffix in (".nhdr", ".mhd"):  # header + separate data file: write both in place
        check_outputs([path] + [path.with_name(case_name(path) + ext) for ext in (".raw", ".raw.gz", ".zraw")])
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(vol.to_sitk(), str(path), compress)
        return path
    with atomic_path(path) as tmp:
        sitk.WriteImage(vol.to_sitk(), str(tmp), compress)
    return path
