"""Failure handling of the run: GPU out of memory retried with a smaller batch; disk-full detection."""

from __future__ import annotations

import dataclasses
import errno

import pytest
import torch

from SFRSegmenterLib.run import job
from SFRSegmenterLib.errors import SFRError


@dataclasses.dataclass
class _Cfg:
    batch_size: int = 8


def test_oom_is_retried_with_half_the_batch_then_explained():
    seen = []

    def train(cfg, resumed):
        seen.append((cfg.batch_size, resumed))
        if cfg.batch_size > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "ok"

    assert job.with_oom_retry(train, _Cfg(), "SAM fine-tuning") == "ok"
    assert seen == [(8, False), (4, True), (2, True)]

    def always(cfg, resumed):
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(SFRError, match="lite_medsam.*--device cpu"):
        job.with_oom_retry(always, _Cfg(batch_size=2), "SAM fine-tuning")

    def other(cfg, resumed):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        job.with_oom_retry(other, _Cfg(), "x")


def test_disk_full_is_recognised_in_the_ways_libraries_report_it():
    assert job.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert job.is_disk_full(OSError(errno.EFBIG, "File too large"))
    assert job.is_disk_full(RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter "
                                              "failed writing file data/0: file write failed"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute") from inner
    except RuntimeError as exc:
        assert job.is_disk_full(exc)
    assert not job.is_disk_full(RuntimeError("shape mismatch"))


def test_file_size_limit_mid_run_stops_cleanly_and_resume_finishes(tmp_path, sample_dir):
    """A real write failure (RLIMIT_FSIZE: writes past the limit fail with EFBIG, as on a full
    disk): one-line error, state failed, every file that exists is complete; --resume finishes."""
    import json
    import os
    import resource
    import signal
    import subprocess
    import sys

    from conftest import REPO
    from test_run_jobs import CASES
    from test_run_pipeline import latest, make_project

    from SFRSegmenterLib.io import read_image

    root = make_project(tmp_path / "proj", sample_dir, CASES, labeled=2, validation=0)
    limit = 48 * 1024

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = dict(os.environ, PYTHONPATH=str(REPO))
    args = [sys.executable, "-m", "SFRSegmenterLib", "run", str(root), "--backbone", "tiny_test",
            "--iterations-sam", "2", "--iterations-vnet", "2", "--device", "cpu", "--vnet-option", "filters=4",
            "--no-report"]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, preexec_fn=small_files, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "disk full" in proc.stderr and "--resume" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("sfr run: error: ") and "Traceback" not in proc.stderr
    run = latest(root)
    assert json.loads((run / "status.json").read_text())["state"] == "failed"
    # no half-written file under a real name: every JSON parses, every volume reads
    for p in run.rglob("*"):
        if p.name.startswith(".tmp"):
            continue
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.name.endswith(".nii.gz"):
            read_image(p)
    assert not (root / "runs" / ".lock").exists()
    ok = subprocess.run([sys.executable, "-m", "SFRSegmenterLib", "run", str(root), "--resume"], env=env,
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((run / "status.json").read_text())["state"] == "done"
