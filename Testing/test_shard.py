"""Cases split over processes under torchrun (gloo, CPU): `sfr pseudolabel`, `sfr predict` and
`sfr review` with two real processes write the same files as one process, each case by one rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SAMPLE, run_sfr
from retrain_testutil import make_project, make_pseudo
from SFRSegmenterLib.shard import Shard, assign

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENV = {"OMP_NUM_THREADS": "1", "SFR_DDP_BACKEND": "gloo"}


def torchrun(nproc: int, *args) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node N -m SFRSegmenterLib --progress json ARGS``."""
    env = dict(os.environ, PYTHONPATH=str(REPO), **ENV)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "SFRSegmenterLib", "--progress", "json", *map(str, args)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def shard_events(stdout: str, stage: str) -> dict:
    """``{rank: [cases]}`` from the processes' ``shard`` events."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            e = json.loads(line)
            if e["event"] == "shard" and e["stage"] == stage:
                assert e["world"] == 2
                out[e["rank"]] = e["cases"]
    return out


def assert_partition(per_rank: dict, cases) -> None:
    """Both ranks worked, and every case was written by exactly one of them."""
    assert sorted(per_rank) == [0, 1] and all(per_rank.values()), per_rank
    done = per_rank[0] + per_rank[1]
    assert sorted(done) == sorted(cases) and len(done) == len(set(done))


def assert_same_files(one: Path, two: Path, names, also=()) -> None:
    """Both folders hold exactly ``names`` + ``also``; the ``names`` are byte-for-byte equal."""
    from SFRSegmenterLib.io import RECORD_FILE  # what sfr wrote there (the output rule), not compared

    listed = [sorted(p.name for p in d.iterdir() if p.name != RECORD_FILE) for d in (one, two)]
    assert listed[0] == listed[1] == sorted([*names, *also])
    for name in names:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


# --------------------------------------------------------------------------- the share


def test_assign_is_a_balanced_deterministic_partition():
    sizes = {f"c{i:02d}": s for i, s in enumerate([90, 10, 50, 50, 40, 30, 30, 20, 5, 5])}
    for world in (1, 2, 3, 4):
        shares = assign(sizes, world)
        flat = [n for s in shares for n in s]
        assert sorted(flat) == sorted(sizes) and len(flat) == len(set(flat))
        loads = [sum(sizes[n] for n in s) for s in shares]
        assert max(loads) - min(loads) <= max(sizes.values())
        assert assign(dict(reversed(list(sizes.items()))), world) == shares  # input order does not matter
    # largest first, each to the lighter process: loads 165 / 165
    assert assign(sizes, 2) == [["c00", "c04", "c06", "c08"], ["c02", "c03", "c05", "c07", "c01", "c09"]]
    # more processes than cases: the extra ones get nothing
    assert assign({"a": 1}, 3) == [["a"], [], []]
    # a process keeps the caller's order of its cases
    names = sorted(sizes)
    assert Shard(rank=1, world=2).mine(names, sizes) == ["c01", "c02", "c03", "c05", "c07", "c09"]
    assert Shard().mine(names, {}) == names


# --------------------------------------------------------------------------- sfr pseudolabel


@pytest.fixture(scope="module")
def sam_project(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("shard-sam") / "proj"
    run_sfr("init", root, "--images", sample_dir / "images", "--labels", sample_dir / "labels",
            "--labeled", 2, "--validation", 2, check=True)
    run_sfr("finetune", root, "--backbone", "tiny_test", "--iterations", 2, "--device", "cpu", "--threads", 1,
            env=ENV, check=True)
    return root


def test_pseudolabel_two_processes_equal_one(sam_project, tmp_path):
    root = sam_project
    run_sfr("pseudolabel", root, "--out", tmp_path / "one", "--device", "cpu", "--threads", 1, env=ENV, check=True)
    proc = torchrun(2, "pseudolabel", root, "--out", tmp_path / "two", "--device", "cpu", "--threads", 1)
    unlabeled = [c["name"] for c in json.loads((root / "sfr-project.json").read_text())["cases"]
                 if c["role"] == "unlabeled"]
    assert len(unlabeled) == 8
    assert_partition(shard_events(proc.stdout, "pseudolabel"), unlabeled)
    files = [f"{c}{s}" for c in unlabeled for s in (".nii.gz", "_confidence.nii.gz")]
    assert_same_files(tmp_path / "one", tmp_path / "two", files, also=["pseudo-labels.json"])  # below

    def without_times(index):
        index.pop("updated")
        for rec in index["cases"].values():
            rec.pop("created")
        return index

    one = without_times(json.loads((tmp_path / "one" / "pseudo-labels.json").read_text()))
    two = without_times(json.loads((tmp_path / "two" / "pseudo-labels.json").read_text()))
    assert list(two["cases"]) == unlabeled  # every case, in the project's order
    assert one == two
    # a re-run under torchrun keeps earlier records of other cases in the index
    torchrun(2, "pseudolabel", root, "--out", tmp_path / "two", "--cases", unlabeled[0], unlabeled[1],
             "--device", "cpu", "--threads", 1)
    again = without_times(json.loads((tmp_path / "two" / "pseudo-labels.json").read_text()))
    assert again == two


# --------------------------------------------------------------------------- sfr predict / sfr review


@pytest.fixture(scope="module")
def vnet(tmp_path_factory):
    """A V-Net trained for two iterations on 32^3 crops of the bundled cases."""
    from SFRSegmenterLib.retrain import RetrainConfig, retrain

    root = tmp_path_factory.mktemp("shard-vnet")
    project = make_project(root / "proj", n_labeled=2, n_unlabeled=2, n_validation=0)
    make_pseudo(project)
    cfg = RetrainConfig(iterations=2, crop=(32, 32, 32), device="cpu", threads=1, save_every=0)
    return retrain(project, cfg, pseudo_dir=project.root / "pseudo", out_dir=root / "vnet")


IMAGES = sorted(p.name[: -len(".nii.gz")] for p in (SAMPLE / "images").glob("*.nii.gz"))


def test_predict_two_processes_equal_one(vnet, tmp_path):
    images = SAMPLE / "images"
    run_sfr("predict", "--model", vnet, "--images", images, "--out", tmp_path / "one", "--device", "cpu",
            "--threads", 1, env=ENV, check=True)
    proc = torchrun(2, "predict", "--model", vnet, "--images", images, "--out", tmp_path / "two",
                    "--device", "cpu", "--threads", 1)
    assert_partition(shard_events(proc.stdout, "predict"), IMAGES)
    files = [f"{c}{s}" for c in IMAGES for s in (".nii.gz", "_confidence.nii.gz")]
    assert_same_files(tmp_path / "one", tmp_path / "two", files)


def test_review_two_processes_equal_one(vnet, tmp_path):
    images = [SAMPLE / "images" / f"{c}.nii.gz" for c in IMAGES[:6]]
    opts = ("--device", "cpu", "--threads", 1, "--tau", 0.9, "--min-structure-mm3", 50)
    run_sfr("review", "--model", vnet, "--images", *images, "--out", tmp_path / "one", *opts, env=ENV, check=True)
    proc = torchrun(2, "review", "--model", vnet, "--images", *images, "--out", tmp_path / "two", *opts)
    assert_partition(shard_events(proc.stdout, "confidence"), IMAGES[:6])
    files = [f"{c}{s}" for c in IMAGES[:6] for s in (".nii.gz", "_confidence.nii.gz", "_lowconf.nii.gz")]
    assert_same_files(tmp_path / "one", tmp_path / "two", files + ["review.json", "slices.json"])
    review = json.loads((tmp_path / "two" / "review.json").read_text())
    assert [e["case"] for e in review["cases"]] == IMAGES[:6]
    assert review["params"]["tau"] == 0.9 and review["params"]["min_structure_mm3"] == 50
    assert all({"confidence", "trusted", "flagged_slices", "low_confidence_voxels", "structure_mm3"} <= set(e)
               for e in review["cases"])


def test_review_equals_the_confidence_functions(vnet, tmp_path):
    """review.json's entry of a case is confidence.review_case of the V-Net's probabilities."""
    from SFRSegmenterLib import confidence
    from SFRSegmenterLib.io import read_image, read_label
    from SFRSegmenterLib.retrain.inference import load_model, predict_volume
    from SFRSegmenterLib.review import review_folder

    case = IMAGES[0]
    image = read_image(SAMPLE / "images" / f"{case}.nii.gz")
    result = review_folder(vnet, [SAMPLE / "images" / f"{case}.nii.gz"], tmp_path, k=3, device="cpu")
    expect = confidence.review_case(case, predict_volume(load_model(vnet, "cpu"), image.array), k=3)
    from SFRSegmenterLib.review import RECORD_KEYS, SLICES_JSON, case_measurements, review_record

    measured = case_measurements(expect, image)
    entry = result["cases"][0]
    assert list(entry) == list(RECORD_KEYS)  # the one review schema sfr run writes too
    assert entry == review_record(measured, entry["trusted"])
    assert entry["trusted"] == (expect.confidence >= confidence.TAU)  # the paper's rule at the default tau
    slices = json.loads((tmp_path / SLICES_JSON).read_text())
    assert slices[case]["slice_confidence"] == expect.slice_confidence
    assert (read_label(tmp_path / f"{case}.nii.gz").array == expect.label).all()
    assert (read_label(tmp_path / f"{case}_lowconf.nii.gz").array == expect.lowconf).all()


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("option, value", [("--tau", "1.5"), ("--flag-k", "-1"), ("--voxel-threshold", "0"),
                                           ("--ranking", "worst"), ("--min-structure-mm3", "-3")])
def test_review_bad_option_is_one_line_exit_2(vnet, tmp_path, option, value):
    proc = run_sfr("review", "--model", vnet, "--images", SAMPLE / "images", "--out", tmp_path / "o",
                   option, value, "--device", "cpu")
    assert proc.returncode == 2 and option in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "o").exists()


def test_two_images_of_one_case_are_refused(vnet, tmp_path):
    import shutil

    from SFRSegmenterLib.io import read_image, write_volume

    src = SAMPLE / "images" / f"{IMAGES[0]}.nii.gz"
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(src, images / src.name)
    write_volume(read_image(src), images / f"{IMAGES[0]}.nrrd")
    proc = run_sfr("predict", "--model", vnet, "--images", images, "--out", tmp_path / "o", "--device", "cpu")
    assert proc.returncode == 2 and f"{IMAGES[0]}.nrrd" in proc.stderr and "two images" in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()
