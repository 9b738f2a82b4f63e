"""Volume I/O keeps geometry exactly; bad files give clear errors."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from SFRSegmenterLib.errors import SFRError
from SFRSegmenterLib.io import (
    Volume,
    case_name,
    read_image,
    read_label,
    read_segmentation,
    write_volume,
)

# An oblique direction (rotation about z by 30 degrees) and an anisotropic spacing.
C, S = np.cos(np.pi / 6), np.sin(np.pi / 6)
DIRECTION = (C, -S, 0.0, S, C, 0.0, 0.0, 0.0, 1.0)
SPACING = (0.625, 0.7, 2.5)
ORIGIN = (-12.5, 30.25, 7.0)


def _volume(dtype=np.float32, shape=(6, 7, 9)) -> Volume:
    rng = np.random.default_rng(0)
    arr = (rng.random(shape) * 100).astype(dtype)
    return Volume(arr, SPACING, ORIGIN, DIRECTION)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"])
def test_image_round_trip_keeps_geometry(tmp_path, suffix):
    vol = _volume()
    path = write_volume(vol, tmp_path / f"case{suffix}")
    back = read_image(path)
    assert back.shape == vol.shape
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.spacing, SPACING, rtol=1e-6)
    np.testing.assert_allclose(back.origin, ORIGIN, atol=1e-5)
    np.testing.assert_allclose(back.direction, DIRECTION, atol=1e-6)
    assert case_name(path) == "case"


def test_segmentation_round_trip(tmp_path):
    lab = _volume(np.uint8)
    lab.array = (lab.array % 3).astype(np.uint8)
    path = write_volume(lab, tmp_path / "case.seg.nrrd")
    back = read_segmentation(path)
    np.testing.assert_array_equal(back.array, lab.array)
    np.testing.assert_allclose(back.spacing, SPACING, rtol=1e-6)
    np.testing.assert_allclose(back.origin, ORIGIN, atol=1e-6)
    np.testing.assert_allclose(back.direction, DIRECTION, atol=1e-6)
    assert set(back.segments) == {1, 2}
    assert case_name(path) == "case"
    # a .seg.nrrd is a valid label for an image with the same geometry
    img = write_volume(_volume(), tmp_path / "case.nii.gz")
    read_label(path, reference=read_image(img))


def test_array_axis_order_is_zyx(tmp_path):
    vol = _volume(shape=(3, 4, 5))  # z=3, y=4, x=5
    path = write_volume(vol, tmp_path / "a.nii.gz")
    assert sitk.ReadImage(str(path)).GetSize() == (5, 4, 3)
    assert read_image(path).spacing_zyx == pytest.approx(tuple(reversed(SPACING)))


def test_write_is_atomic_and_leaves_no_temp(tmp_path):
    write_volume(_volume(), tmp_path / "a.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz"]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_image_rejected(tmp_path, suffix, value):
    # NIfTI written by nibabel: ITK's reader would silently turn NaN into 0.
    import nibabel as nib

    vol = _volume()
    vol.array[1, 2, 3] = value
    path = tmp_path / f"nan{suffix}"
    if suffix.startswith(".nii"):
        nib.save(nib.Nifti1Image(np.transpose(vol.array, (2, 1, 0)), np.eye(4)), str(path))
    else:
        write_volume(vol, path)
    with pytest.raises(SFRError, match="1 NaN or Inf") as exc:
        read_image(path)
    assert f"nan{suffix}" in str(exc.value)


def test_2d_and_4d_rejected(tmp_path):
    two = tmp_path / "two.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((7, 9), np.float32)), str(two))
    with pytest.raises(SFRError, match=r"expected a 3D volume, got a 2D image"):
        read_image(two)
    frames = [sitk.GetImageFromArray(np.zeros((3, 4, 5), np.float32)) for _ in range(2)]
    four = tmp_path / "four.nii.gz"
    sitk.WriteImage(sitk.JoinSeries(frames), str(four))
    with pytest.raises(SFRError, match=r"expected a 3D volume, got a 4D image"):
        read_image(four)
    vec = tmp_path / "vec.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 2), np.float32), isVector=True), str(vec))
    with pytest.raises(SFRError, match="components per voxel"):
        read_image(vec)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_truncated_file_rejected(tmp_path, suffix):
    good = write_volume(_volume(shape=(20, 30, 30)), tmp_path / f"good{suffix}")
    data = good.read_bytes()
    bad = tmp_path / f"cut{suffix}"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(SFRError, match="cannot read volume") as exc:
        read_image(bad)
    assert f"cut{suffix}" in str(exc.value)


def test_unreadable_file_rejected(tmp_path):
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"not an image at all"))
    with pytest.raises(SFRError, match="cannot read volume"):
        read_image(garbage)


def test_label_checks(tmp_path):
    img_vol = _volume()
    img = read_image(write_volume(img_vol, tmp_path / "img.nii.gz"))

    frac = img_vol.with_array(np.full(img_vol.shape, 0.5, np.float32))
    with pytest.raises(SFRError, match="non-integer"):
        read_label(write_volume(frac, tmp_path / "frac.nii.gz"), img)

    big = img_vol.with_array(np.full(img_vol.shape, 3, np.uint8))
    with pytest.raises(SFRError, match=r"outside the declared classes 0\.\.1"):
        read_label(write_volume(big, tmp_path / "big.nii.gz"), img, num_classes=2)

    moved = Volume(np.zeros(img_vol.shape, np.uint8), SPACING, (0.0, 0.0, 0.0), DIRECTION)
    with pytest.raises(SFRError, match="origin") as exc:
        read_label(write_volume(moved, tmp_path / "moved.nii.gz"), img)
    assert "moved.nii.gz" in str(exc.value) and "img.nii.gz" in str(exc.value)

    spaced = Volume(np.zeros(img_vol.shape, np.uint8), (1, 1, 1), ORIGIN, DIRECTION)
    with pytest.raises(SFRError, match="spacing"):
        read_label(write_volume(spaced, tmp_path / "spaced.nii.gz"), img)

    turned = Volume(np.zeros(img_vol.shape, np.uint8), SPACING, ORIGIN, (1, 0, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(SFRError, match="direction"):
        read_label(write_volume(turned, tmp_path / "turned.nii.gz"), img)

    small = Volume(np.zeros((6, 7, 8), np.uint8), SPACING, ORIGIN, DIRECTION)
    with pytest.raises(SFRError, match="size"):
        read_label(write_volume(small, tmp_path / "small.nii.gz"), img)

    # within tolerance: accepted
    near = Volume(np.ones(img_vol.shape, np.uint8), SPACING, tuple(o + 1e-5 for o in ORIGIN), DIRECTION)
    lab = read_label(write_volume(near, tmp_path / "near.nii.gz"), img, num_classes=2)
    assert lab.array.dtype == np.uint8


def test_real_sample_geometry_preserved(tmp_path, sample_dir):
    src = sample_dir / "images" / "hippocampus_003.nii.gz"
    vol = read_image(src)
    out = read_image(write_volume(vol, tmp_path / "copy.nrrd"))
    ref = sitk.ReadImage(str(src))
    assert out.spacing == ref.GetSpacing()
    assert out.origin == ref.GetOrigin()
    assert out.direction == ref.GetDirection()
    np.testing.assert_array_equal(out.array, sitk.GetArrayFromImage(ref))


def test_written_files_get_normal_permissions(tmp_path):
    import os

    from SFRSegmenterLib.io import default_file_mode
    from SFRSegmenterLib.manifest import write_json_atomic

    vol = write_volume(_volume(), tmp_path / "a.nii.gz")
    write_json_atomic(tmp_path / "m.json", {"a": 1})
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    expected = os.stat(plain).st_mode & 0o777
    assert default_file_mode() == expected
    assert os.stat(vol).st_mode & 0o777 == expected
    assert os.stat(tmp_path / "m.json").st_mode & 0o777 == expected
