"""Property-based bad input (issue 15): generated corrupt volumes, manifests and option values.

Each example asserts the contract of every ``sfr`` command: exit status 2, one line on stderr
naming the file or the option, no traceback, nothing written or changed.  The examples call the
real command line (``SFRSegmenterLib.cli.main``, the code ``sfr`` runs) in this process for speed
(an uncaught exception fails the example, so "no traceback" is checked by construction); one
example of each kind is replayed as a real ``sfr`` subprocess.  Example counts are small so the
whole file runs in well under two minutes on a CPU.
"""

from __future__ import annotations

import gzip
import hashlib
import io as stdio
import json
import shutil
import string
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import SAMPLE, copy_samples, run_sfr  # noqa: E402

CASES = ["hippocampus_001", "hippocampus_003", "hippocampus_004"]
FAST = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def sfr_main(*args) -> tuple:
    """``sfr ARGS`` in this process: (exit status, stdout, stderr)."""
    from SFRSegmenterLib import cli, io as sfr_io

    out, err = stdio.StringIO(), stdio.StringIO()
    saved = dict(sfr_io._PROTECTED)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = cli.main([str(a) for a in args])
            except SystemExit as exc:  # argparse
                code = exc.code
    finally:
        sfr_io._PROTECTED.clear()
        sfr_io._PROTECTED.update(saved)
    return code, out.getvalue(), err.getvalue()


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def assert_contract(code, err, *needles):
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert any(str(n) in lines[0] for n in needles), (needles, lines[0])


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("props") / "proj"
    images, labels = copy_samples(root, CASES)
    code, _, err = sfr_main("--progress", "none", "init", root, "--images", images, "--labels", labels,
                            "--labeled", "1")
    assert code == 0, err
    return root


# --------------------------------------------------------------------------- corrupt volumes

VALID = (SAMPLE / "images" / f"{CASES[0]}.nii.gz").read_bytes()
VALID_RAW = gzip.decompress(VALID)


@st.composite
def corrupt_volume(draw):
    """(file name, bytes) of a damaged volume: truncated, random bytes, or a mutated NIfTI header."""
    kind = draw(st.sampled_from(["truncated_gz", "truncated_raw", "random", "header"]))
    if kind == "truncated_gz":
        return "case.nii.gz", VALID[: draw(st.integers(0, len(VALID) - 1))]
    if kind == "truncated_raw":
        return "case.nii", VALID_RAW[: draw(st.integers(0, len(VALID_RAW) - 1))]
    if kind == "random":
        suffix = draw(st.sampled_from([".nii.gz", ".nii", ".nrrd", ".mha", ".seg.nrrd"]))
        return "case" + suffix, draw(st.binary(min_size=0, max_size=600))
    data = bytearray(VALID_RAW)
    for _ in range(draw(st.integers(1, 4))):  # overwrite a few header fields (dims, datatype, offset...)
        at = draw(st.integers(0, 347))
        data[at] = draw(st.integers(0, 255))
    return "case.nii", bytes(data)


@FAST
@given(volume=corrupt_volume())
def test_corrupt_volumes_are_one_line_naming_the_file(tmp_path_factory, volume):
    folder = tmp_path_factory.mktemp("vol")
    name, data = volume
    path = folder / name
    path.write_bytes(data)
    before = snapshot(folder)
    code, out, err = sfr_main("stitch", path, "--out", folder / "mosaic.png")
    if code == 0:  # a mutated header byte can leave a valid volume (e.g. a description byte)
        (folder / "mosaic.png").unlink()
    else:
        assert_contract(code, err, path)
        assert snapshot(folder) == before


# --------------------------------------------------------------------------- manifests

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
FIELDS = ["schema_version", "classes", "cases", "name", "case.name", "case.image", "case.label", "case.role"]
bad_names = st.one_of(
    st.builds(lambda a, b: f"{a}/{b}", st.text(string.ascii_letters, max_size=5), st.text(max_size=5)),
    st.builds(lambda a: f"../{a}", st.text(max_size=6)),
    st.builds(lambda a, c: f"{a}{c}", st.text(string.ascii_letters, max_size=5), st.sampled_from(["\n", "\t", "\x00", "\x7f"])),
    st.sampled_from(["", ".", "..", "/abs/path", "a\\b"]),
)


def _set(data: dict, field: str, value, index: int) -> None:
    if field.startswith("case."):
        data["cases"][index % len(data["cases"])][field[5:]] = value
    else:
        data[field] = value


@FAST
@given(field=st.sampled_from(FIELDS), value=json_values, index=st.integers(0, 2))
def test_generated_manifest_fields_are_accepted_or_refused_in_one_line(project, field, value, index):
    manifest = project / "sfr-project.json"
    good = manifest.read_text()
    data = json.loads(good)
    _set(data, field, value, index)
    manifest.write_text(json.dumps(data))
    try:
        before = snapshot(project)
        code, out, err = sfr_main("info", project)
        assert code in (0, 2), err
        if code == 2:
            assert_contract(code, err, manifest)
        assert snapshot(project) == before
    finally:
        manifest.write_text(good)


@FAST
@given(name=bad_names, index=st.integers(0, 2))
def test_unsafe_case_names_are_always_refused(project, name, index):
    manifest = project / "sfr-project.json"
    good = manifest.read_text()
    data = json.loads(good)
    data["cases"][index]["name"] = name
    manifest.write_text(json.dumps(data))
    try:
        before = snapshot(project)
        code, _, err = sfr_main("info", project)
        assert_contract(code, err, manifest)
        assert f"cases[{index}].name" in err
        assert snapshot(project) == before
    finally:
        manifest.write_text(good)


@FAST
@given(data=st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")) | st.binary(max_size=40))
def test_a_manifest_that_is_not_json_is_one_line(project, data):
    manifest = project / "sfr-project.json"
    good = manifest.read_text()
    manifest.write_bytes(data)
    try:
        code, _, err = sfr_main("info", project)
        if code != 0:
            assert_contract(code, err, manifest)
    finally:
        manifest.write_text(good)


# --------------------------------------------------------------------------- option values

NUMERIC = {  # option -> a strategy of values outside its range
    "--seed": st.integers(max_value=-1) | st.integers(min_value=2**32),
    "--iterations-sam": st.integers(max_value=0),
    "--iterations-vnet": st.integers(max_value=0),
    "--batch-size-sam": st.integers(max_value=0),
    "--pseudo-overlap": st.floats(min_value=0.9, exclude_min=True, allow_nan=False, allow_infinity=False)
    | st.floats(max_value=0, exclude_max=True, allow_nan=False, allow_infinity=False),
    "--tau": st.floats(max_value=0, allow_nan=False, allow_infinity=False)
    | st.floats(min_value=1, exclude_min=True, allow_nan=False, allow_infinity=False),
    "--min-structure": st.floats(max_value=0, exclude_max=True, allow_nan=False, allow_infinity=False),
    "--flag-k": st.integers(max_value=-1),
    "--rounds": st.integers(max_value=-1),
}
STAGE_OPTIONS = {  # KEY -> values of a wrong type or outside the range
    ("--vnet-option", "filters"): st.integers(max_value=0) | st.text(string.ascii_letters, min_size=1, max_size=4),
    ("--vnet-option", "dropout"): st.floats(min_value=1, allow_nan=False, allow_infinity=False),
    ("--vnet-option", "lr"): st.floats(max_value=0, allow_nan=False, allow_infinity=False),
    ("--vnet-option", "labeled_bs"): st.integers(max_value=0),
    ("--vnet-option", "ema_decay"): st.floats(min_value=1, exclude_min=True, allow_nan=False, allow_infinity=False),
    ("--sam-option", "lora_rank"): st.integers(max_value=-1) | st.floats(0.1, 0.9),
    ("--sam-option", "lr"): st.floats(max_value=0, allow_nan=False, allow_infinity=False),
    ("--sam-option", "iterations"): st.integers(max_value=0),
    ("--sam-option", "bezier_p"): st.floats(min_value=1, exclude_min=True, allow_nan=False, allow_infinity=False),
    ("--sam-option", "augment"): st.integers() | st.text(string.ascii_letters, min_size=1, max_size=4),
}


@st.composite
def bad_option(draw):
    if draw(st.booleans()):
        flag = draw(st.sampled_from(sorted(NUMERIC)))
        return [flag, repr(draw(NUMERIC[flag]))], flag
    flag, key = draw(st.sampled_from(sorted(STAGE_OPTIONS)))
    value = draw(STAGE_OPTIONS[(flag, key)])
    return [flag, f"{key}={json.dumps(value) if not isinstance(value, str) else value}"], f"{flag} {key}"


@FAST
@given(option=bad_option())
def test_bad_option_values_are_refused_before_anything_is_created(project, option):
    args, named = option
    before = snapshot(project)
    code, out, err = sfr_main("--progress", "none", "run", project, "--backbone", "tiny_test", "--device", "cpu",
                              *args)
    assert_contract(code, err, named)
    assert snapshot(project) == before
    assert not (project / "runs").exists()


@FAST
@given(flag=st.sampled_from(["--seed", "--iterations-sam", "--tau", "--crop"]),
       text=st.text(string.ascii_letters + "-_.", min_size=1, max_size=5).filter(
           lambda t: not t.lstrip("-").replace(".", "", 1).isdigit()))
def test_non_numbers_are_one_usage_line(project, flag, text):
    args = [flag, text] + (["16", "16"] if flag == "--crop" else [])
    code, _, err = sfr_main("run", project, *args)
    assert_contract(code, err, flag)


# --------------------------------------------------------------------------- the same, as real processes


def test_one_example_of_each_kind_as_a_real_subprocess(project, tmp_path):
    bad = tmp_path / "case.nii.gz"
    bad.write_bytes(VALID[:100])
    proc = run_sfr("stitch", bad)
    assert_contract(proc.returncode, proc.stderr, bad)
    proc = run_sfr("run", project, "--vnet-option", "filters=-3")
    assert_contract(proc.returncode, proc.stderr, "--vnet-option filters")
    manifest = project / "sfr-project.json"
    good = manifest.read_text()
    data = json.loads(good)
    data["cases"][1]["name"] = "../../escape"
    manifest.write_text(json.dumps(data))
    try:
        proc = run_sfr("run", project, "--backbone", "tiny_test")
        assert_contract(proc.returncode, proc.stderr, manifest)
    finally:
        manifest.write_text(good)
    assert not (project / "runs").exists()
    shutil.rmtree(tmp_path, ignore_errors=True)
