"""sfr init / info / stitch as a user runs them, and how bad input is answered."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SAMPLE, copy_samples

from SFRSegmenterLib.io import Volume, read_image, write_volume
from SFRSegmenterLib.manifest import MANIFEST_NAME, SCHEMA_VERSION, load_project


def _one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def data(tmp_path, sample_cases):
    """A writable copy of 6 sample cases."""
    copy_samples(tmp_path, sample_cases[:6])
    return tmp_path


def test_help_and_version(sfr):
    proc = sfr("--help", check=True)
    for cmd in ("init", "info", "stitch", "evaluate"):
        assert cmd in proc.stdout
    assert sfr("--version", check=True).stdout.startswith("sfr 0.")


def test_init_info_with_order_labeled_and_validation(sfr, data, sample_cases):
    order = list(reversed(sample_cases[:6]))
    (data / "order.txt").write_text("\n".join(order) + "\n")
    proj = data / "proj"
    proc = sfr("init", proj, "--images", data / "images", "--labels", data / "labels",
               "--case-list", data / "order.txt", "--labeled", 2, "--validation", 1, check=True)
    assert "6 cases (2 labeled, 3 unlabeled, 1 validation)" in proc.stdout
    manifest = json.loads((proj / MANIFEST_NAME).read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert [c["name"] for c in manifest["cases"]] == order
    assert [c["role"] for c in manifest["cases"]] == ["labeled"] * 2 + ["unlabeled"] * 3 + ["validation"]
    assert manifest["classes"] == ["background", "class_1", "class_2"]  # sample labels 0..2
    # paths outside the project are absolute and resolve to the data
    project = load_project(proj)
    assert project.image_path(project.cases[0]).exists()
    info = json.loads(sfr("info", proj, "--json", check=True).stdout)
    assert (info["labeled"], info["unlabeled"], info["validation"]) == (2, 3, 1)
    assert info["with_ground_truth"] == 4
    text = sfr("info", proj, check=True).stdout
    assert "2 labeled" in text and order[0] in text
    # nothing is overwritten without --force
    proc = sfr("init", proj, "--images", data / "images")
    _one_line_error(proc, MANIFEST_NAME, "--force")
    assert json.loads((proj / MANIFEST_NAME).read_text()) == manifest
    sfr("init", proj, "--images", data / "images", "--force", check=True)
    assert all(c["role"] == "unlabeled" for c in json.loads((proj / MANIFEST_NAME).read_text())["cases"])


def test_manifest_inside_project_uses_relative_paths(sfr, data):
    proj = data  # images/ and labels/ inside the project folder
    sfr("init", proj, "--images", data / "images", "--labels", data / "labels", check=True)
    case = json.loads((proj / MANIFEST_NAME).read_text())["cases"][0]
    assert case["image"].startswith("images/") and case["label"].startswith("labels/")


def test_manifest_is_written_atomically(data):
    from SFRSegmenterLib.manifest import init_project

    init_project(data / "p", data / "images")
    assert sorted(p.name for p in (data / "p").iterdir()) == [MANIFEST_NAME]


def _write_bad_label(data, name, transform):
    path = data / "labels" / f"{name}.nii.gz"
    img = read_image(data / "images" / f"{name}.nii.gz")
    write_volume(transform(img), path)
    return path


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("size", "label size"),
        ("spacing", "label spacing"),
        ("origin", "label origin"),
        ("direction", "label direction"),
        ("fraction", "non-integer"),
        ("classes", "outside the declared classes"),
    ],
)
def test_init_rejects_bad_labels(sfr, data, sample_cases, kind, needle):
    name = sample_cases[1]

    def bad(img: Volume) -> Volume:
        zeros = np.zeros(img.shape, np.uint8)
        if kind == "size":
            return Volume(np.zeros((img.shape[0] + 1,) + img.shape[1:], np.uint8), img.spacing, img.origin, img.direction)
        if kind == "spacing":
            return Volume(zeros, (1.0, 1.0, 1.2), img.origin, img.direction)
        if kind == "origin":
            return Volume(zeros, img.spacing, (5.0, 0.0, 0.0), img.direction)
        if kind == "direction":
            return Volume(zeros, img.spacing, img.origin, (0, 1, 0, 1, 0, 0, 0, 0, 1))
        if kind == "fraction":
            return img.with_array(np.full(img.shape, 0.25, np.float32))
        return img.with_array(np.full(img.shape, 7, np.uint8))

    path = _write_bad_label(data, name, bad)
    extra = ["--classes", "3"] if kind == "classes" else []
    proc = sfr("init", data / "proj", "--images", data / "images", "--labels", data / "labels", *extra)
    _one_line_error(proc, str(path), needle)
    assert not (data / "proj" / MANIFEST_NAME).exists()


def test_init_rejects_bad_images_and_folders(sfr, data, sample_cases, tmp_path):
    # NaN in an image
    name = sample_cases[2]
    img = read_image(data / "images" / f"{name}.nii.gz")
    arr = img.array.copy()
    arr[0, 0, 0] = np.nan
    write_volume(img.with_array(arr), data / "images" / f"{name}.nrrd")
    (data / "images" / f"{name}.nii.gz").unlink()
    _one_line_error(sfr("init", data / "p1", "--images", data / "images"), f"{name}.nrrd", "NaN")
    (data / "images" / f"{name}.nrrd").unlink()
    shutil.copy(SAMPLE / "images" / f"{name}.nii.gz", data / "images")

    # 2D image
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.float32)), str(data / "images" / "flat.nii.gz"))
    _one_line_error(sfr("init", data / "p2", "--images", data / "images"), "flat.nii.gz", "2D")
    (data / "images" / "flat.nii.gz").unlink()

    # truncated file
    src = (data / "images" / f"{sample_cases[0]}.nii.gz").read_bytes()
    (data / "images" / "cut.nii.gz").write_bytes(src[: len(src) // 3])
    _one_line_error(sfr("init", data / "p3", "--images", data / "images"), "cut.nii.gz", "truncated")
    (data / "images" / "cut.nii.gz").unlink()

    # duplicate case names (same name, two formats)
    shutil.copy(data / "images" / f"{sample_cases[0]}.nii.gz", data / "images" / f"{sample_cases[0]}.nii")
    _one_line_error(sfr("init", data / "p4", "--images", data / "images"), "duplicate case name", sample_cases[0])
    (data / "images" / f"{sample_cases[0]}.nii").unlink()

    # empty folder, missing folder
    (tmp_path / "empty").mkdir()
    _one_line_error(sfr("init", data / "p5", "--images", tmp_path / "empty"), "empty", "no volumes")
    _one_line_error(sfr("init", data / "p6", "--images", tmp_path / "nowhere"), "nowhere", "not found")

    # case list naming an unknown case; --labeled larger than available
    (data / "list.txt").write_text("nosuchcase\n")
    _one_line_error(sfr("init", data / "p7", "--images", data / "images", "--cases", data / "list.txt"), "list.txt", "nosuchcase")
    _one_line_error(sfr("init", data / "p8", "--images", data / "images", "--labels", data / "labels", "--labeled", 99), "--labeled 99")


def test_newer_schema_refused(sfr, data):
    sfr("init", data / "p", "--images", data / "images", check=True)
    path = data / "p" / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["schema_version"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps(manifest))
    _one_line_error(sfr("info", data / "p"), str(path), "newer")
    _one_line_error(sfr("info", data / "nothing"), "not an SFR project")


def test_stitch_command_writes_png_and_plan(sfr, sample_dir, sample_cases, tmp_path):
    name = sample_cases[0]
    out = tmp_path / "mosaic.png"
    proc = sfr("stitch", sample_dir / "images" / f"{name}.nii.gz", "--label",
               sample_dir / "labels" / f"{name}.nii.gz", "--canvas", 256, "--out", out, "--json", check=True)
    plan = json.loads(proc.stdout)
    for key in ("rows", "cols", "cell", "pad", "slabs"):
        assert key in plan
    from PIL import Image

    png = np.asarray(Image.open(out))
    assert png.shape == (256, 256 * plan["slabs"] + 8 * (plan["slabs"] - 1), 3)
    coloured = (png[..., 0] != png[..., 1]) | (png[..., 1] != png[..., 2])
    assert coloured.any()  # label outlines are drawn in colour
    proc = sfr("stitch", sample_dir / "images" / f"{name}.nii.gz", "--canvas", 16)
    _one_line_error(proc, f"{name}.nii.gz", "does not fit")
