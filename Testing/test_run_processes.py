"""``sfr run --processes N``: stage R, the pseudo-labels and the confidence stage on N torchrun
processes (gloo on the CPU).

Real ``sfr run`` subprocesses on the bundled hippocampus cases with the tiny test SAM (its output
is meaningless; these tests compare one process with two, not accuracy), real torchrun children.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from SFRSegmenterLib.errors import SFRError
from SFRSegmenterLib.run import distributed

from test_run_pipeline import TINY, latest, make_project, stages

#: stage R is equal on any number of processes without dropout and batch normalisation
EXACT = [*TINY, "--vnet-option", 'norm="instancenorm"', "--vnet-option", "dropout=0", "--no-report"]


def test_the_number_of_processes_is_checked_for_the_device():
    import torch

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert distributed.resolve_processes("auto", cuda, cuda_devices=4)[0] == 4
    assert distributed.resolve_processes("auto", cuda, cuda_devices=1)[0] == 1
    assert distributed.resolve_processes("auto", torch.device("cuda", 1), cuda_devices=4)[0] == 1
    assert distributed.resolve_processes("auto", cpu)[0] == 1
    assert distributed.resolve_processes(2, cpu)[0] == 2
    assert distributed.resolve_processes("3", cuda, cuda_devices=4)[0] == 3
    for asked, device, message in ((5, cuda, "has 4 CUDA device"), (2, torch.device("cuda", 1), "give --device cuda"),
                                   (2, torch.device("mps"), "not MPS"), (0, cpu, ">= 1"), ("two", cpu, ">= 1")):
        with pytest.raises(SFRError, match=message):
            distributed.resolve_processes(asked, device, cuda_devices=4)


def test_the_stage_key_names_the_processes_only_where_they_change_the_result():
    from SFRSegmenterLib.retrain import RetrainConfig

    assert distributed.key_parts(2, RetrainConfig(norm="instancenorm", dropout=0.0)) == []
    assert distributed.key_parts(2, RetrainConfig()) == [{"processes": 2}]  # batch norm, dropout
    assert distributed.key_parts(2, RetrainConfig(norm="instancenorm")) == [{"processes": 2}]  # dropout
    assert distributed.key_parts(1, RetrainConfig()) == []


@pytest.mark.parametrize("value, message", [("0", "--processes must be a whole number >= 1"),
                                            ("many", "--processes must be a whole number >= 1"),
                                            ("3", "labeled batch 2 cannot be split over 3 processes")])
def test_bad_processes_are_refused_before_any_work(tmp_path, sample_dir, value, message):
    from conftest import run_sfr

    root = make_project(tmp_path / "proj", sample_dir)
    proc = run_sfr("run", root, *TINY, "--processes", value)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (root / "runs").exists()


def _state(run):
    import torch

    return torch.load(run / "vnet" / "model.pt", weights_only=True)["state_dict"]


def _events(run):
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory, sample_dir):
    """The same short run in two projects: ``{1: run, 2: run}``, one process, then two."""
    from conftest import run_sfr

    runs = {}
    for n in (1, 2):
        root = make_project(tmp_path_factory.mktemp(f"proj{n}") / "proj", sample_dir)
        t0 = time.monotonic()
        run_sfr("run", root, *EXACT, "--processes", str(n), check=True)
        runs[n] = latest(root)
        print(f"{n} process(es): {time.monotonic() - t0:.1f} s")
    return runs


def test_two_processes_give_the_results_of_one(one_and_two, tmp_path):
    """One process, then two (stage R data-parallel, the pseudo-labels and the confidence stage
    split by case): same stage keys, same V-Net weights, pseudo-labels and confidence stage."""
    import torch

    from SFRSegmenterLib.io import read_image

    one, two = one_and_two[1], one_and_two[2]
    assert json.loads((two / "config.json").read_text())["processes"] == 2
    assert json.loads((one / "config.json").read_text())["processes"] == 1
    assert {k: v["key"] for k, v in stages(one).items()} == {k: v["key"] for k, v in stages(two).items()}
    meta = json.loads((two / "stages" / "retrain-r0" / "meta.json").read_text())
    assert meta["processes"] == 2
    a, b = _state(one), _state(two)
    for k in a:  # equal up to float summation order (the existing DDP test's rtol, 3 iterations)
        assert torch.allclose(a[k].float(), b[k].float(), rtol=1e-4, atol=1e-5), k
    pseudo = sorted((one / "stages" / "pseudolabel-r0").glob("*.nii.gz"))
    assert len(pseudo) == 4  # 2 cases: label + confidence, written by either process
    for f in pseudo:  # SAM's pseudo-labels: one case, one process; the thread count may differ, so the
        # confidences agree up to float summation order and the labels exactly
        mine, theirs = read_image(f).array, read_image(two / "stages" / "pseudolabel-r0" / f.name).array
        if f.name.endswith("_confidence.nii.gz"):
            assert np.allclose(mine, theirs, rtol=0, atol=1e-5), f.name
        else:
            assert np.array_equal(mine, theirs), f.name
    for f in sorted((one / "pseudo").glob("*_confidence.nii.gz")):  # the V-Net's maps
        assert np.abs(read_image(f).array - read_image(two / "pseudo" / f.name).array).max() < 1e-2
    log = (two / "log.txt").read_text()
    assert "on 2 processes" in log and "x 2 processes" in log
    # the confidence stage: one new case in each process, equal to one process with the same inputs
    assert "confidence: 2 of 2 case(s) computed by 2 processes (process 0: 1, process 1: 1)" in log
    estimate = next(e for e in _events(two) if e["event"] == "estimate")  # counted for 2 processes sharing the CPU
    assert estimate["processes"]["processes"] == 2 and "CPU cores" in estimate["processes"]["why"]
    _equal_to_one_process(two, tmp_path / "again")
    # the processes' events arrive in the run's events as the one process's do
    for run in (one, two):
        retrain = [e for e in _events(run) if e["event"] == "progress" and e["stage"] == "retrain"]
        assert retrain and retrain[-1]["step"] == retrain[-1]["total"] == 3
    assert ("overall" in retrain[-1]) == ("overall" in [e for e in _events(one) if e["event"] == "progress"][-1])
    assert json.loads((two / "status.json").read_text())["state"] == "done"


def _close(a, b, path=""):
    """Equal, floats up to 1e-5 (what the processes' thread counts change in their sums)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert b is not None and abs(float(a) - float(b)) <= 1e-5, (path, a, b)
    else:
        assert a == b, (path, a, b)


def _equal_to_one_process(run, again):
    """``run``'s confidence stage (computed by 2 processes) computed again by the pipeline on one
    process, in the run folder ``again``, from the same V-Net and SAM pseudo-labels: the same maps
    (labels exactly, confidence up to 1e-5) and the same ``cases.json`` entries (but their keys:
    the stages it reads are named anew here, so that nothing is reused from ``run``).  On the way
    it is cancelled through the run's cancel file once its first case is done: that case is kept
    and the resumed stage predicts only the other."""
    import dataclasses

    from SFRSegmenterLib import events, jobs
    from SFRSegmenterLib.errors import Cancelled
    from SFRSegmenterLib.io import read_image
    from SFRSegmenterLib.manifest import load_project
    from SFRSegmenterLib.review import CASE_SUFFIXES
    from SFRSegmenterLib.run.config import load_run_config
    from SFRSegmenterLib.run.pipeline import Pipeline

    project = load_project(run.parent.parent)
    names = [c.name for c in project.by_role("unlabeled")]
    pipe = Pipeline(project, again, dataclasses.replace(load_run_config(run), processes=1))
    pipe.runner.records.update({"retrain-r0": {"key": "the V-Net of run two"},
                                "pseudolabel-r0": {"key": "the SAM labels of run two"}})
    sam = run / "stages" / "pseudolabel-r0"
    sam_labels = {c: sam / f"{c}.nii.gz" for c in names}

    def cancel_after_the_first_case(record):  # what `sfr cancel` writes, while the stage runs
        if record.get("event") == "progress" and record.get("stage") == "confidence" and record.get("step") == 1:
            jobs.request_cancel(again)

    events.add_sink(cancel_after_the_first_case)
    try:
        with pytest.raises(Cancelled):
            pipe.stage_confidence(0, run / "stages" / "retrain-r0", sam_labels)
    finally:
        events.remove_sink(cancel_after_the_first_case)
    cf = again / "stages" / "confidence-r0"
    assert pipe.runner.records["confidence-r0"]["status"] == "cancelled"
    assert list(json.loads((cf / "cases.json").read_text())) == names[:1]
    first = (cf / f"{names[0]}.nii.gz").stat().st_mtime_ns
    (again / jobs.CANCEL_NAME).unlink()  # as `sfr run --resume` does
    assert pipe.stage_confidence(0, run / "stages" / "retrain-r0", sam_labels) == cf
    assert (cf / f"{names[0]}.nii.gz").stat().st_mtime_ns == first  # kept, not predicted again
    two = run / "stages" / "confidence-r0"
    one_entries, two_entries = (json.loads((d / "cases.json").read_text()) for d in (cf, two))
    assert list(one_entries) == list(two_entries) == names
    for c in names:
        _close({k: v for k, v in one_entries[c].items() if k != "key"},
               {k: v for k, v in two_entries[c].items() if k != "key"}, c)
        for suffix in CASE_SUFFIXES:
            a, b = read_image(cf / f"{c}{suffix}").array, read_image(two / f"{c}{suffix}").array
            if suffix == "_confidence.nii.gz":
                assert np.allclose(a, b, rtol=0, atol=1e-5), (c, suffix)
            else:
                assert np.array_equal(a, b), (c, suffix)


def test_cancel_stops_the_processes_at_a_safe_point_and_resume_finishes(tmp_path, sample_dir):
    from conftest import REPO, run_sfr

    root = make_project(tmp_path / "proj", sample_dir)
    # the cancel is asked at the first V-Net step and seen within a few; the resume does the rest
    iterations = 30
    args = list(EXACT)
    args[args.index("--iterations-vnet") + 1] = str(iterations)
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "SFRSegmenterLib", "--progress", "json", "run", str(root), *args,
                             "--processes", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})
    try:
        for line in proc.stdout:  # the main process's progress, forwarded by the pipeline
            e = json.loads(line) if line.startswith("{") else {}
            if e.get("event") == "progress" and e.get("stage") == "retrain" and e["step"] >= 1:
                run_sfr("cancel", root, check=True)
                break
        proc.stdout.read()
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 3, proc.stderr.read()
    run = latest(root)
    record = stages(run)["retrain-r0"]
    assert record["status"] == "cancelled"
    import torch

    ckpt = torch.load(run / "stages" / "retrain-r0" / "checkpoint.pt", weights_only=True)
    assert 1 <= ckpt["iteration"] < iterations
    run_sfr("run", root, "--resume", check=True)
    assert stages(run)["retrain-r0"]["status"] == "done"
    log = (run / "log.txt").read_text()
    assert "retrain-r0: resuming" in log
    assert "step times of stage F and stage R measured earlier on this machine reused" in log  # the resume timed nothing again


def test_a_bad_input_in_a_process_is_the_pipelines_error(tmp_path, sample_dir):
    """What a torchrun process raises comes back as the same kind of error, with its file."""
    from SFRSegmenterLib.manifest import load_project
    from SFRSegmenterLib.retrain import RetrainConfig

    project = load_project(make_project(tmp_path / "proj", sample_dir))
    cfg = RetrainConfig(iterations=1, crop=(32, 32, 32), filters=4, norm="instancenorm", dropout=0.0, device="cpu")
    with pytest.raises(SFRError, match="no pseudo-labels.json") as err:
        distributed.call("retrain", 2, tmp_path, lambda: False, project, cfg,
                         pseudo_dir=tmp_path / "missing", out_dir=tmp_path / "vnet")
    assert err.value.path == str(tmp_path / "missing")
    assert not (tmp_path / "vnet" / "model.pt").exists()
