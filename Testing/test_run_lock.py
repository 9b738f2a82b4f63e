"""The project lock with real processes: a live holder refuses a second run, a killed one is stale."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from SFRSegmenterLib import jobs
from SFRSegmenterLib.errors import SFRError

from conftest import REPO

HOLDER = """
import sys, time
sys.path.insert(0, {repo!r})
from SFRSegmenterLib import jobs
lock = jobs.ProjectLock({root!r}, "holder-run").acquire()
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def project(tmp_path, sample_dir):
    from SFRSegmenterLib.manifest import init_project

    root = tmp_path / "proj"
    init_project(root, sample_dir / "images", sample_dir / "labels", labeled=2)
    return root


def _hold(root):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(repo=str(REPO), root=str(root))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_live_lock_refuses_a_second_run_and_a_killed_holder_is_cleared(project, sfr):
    holder = _hold(project)
    try:
        info = json.loads((project / "runs" / ".lock").read_text())
        assert info["pid"] == holder.pid and info["host"] == socket.gethostname()
        assert info["run_id"] == "holder-run" and info["started"]
        second = sfr("run", project, "--iterations-sam", "1")
        assert second.returncode == 2
        assert "busy" in second.stderr and str(holder.pid) in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1  # one line, no traceback
        assert not (project / "runs" / "latest").exists()  # nothing was created
        with pytest.raises(SFRError, match="busy"):
            jobs.ProjectLock(project, "me").acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    # the holder died with kill -9: its lock file is still there, but stale
    assert (project / "runs" / ".lock").exists()
    lock = jobs.ProjectLock(project, "me").acquire()
    assert json.loads((project / "runs" / ".lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (project / "runs" / ".lock").exists()


def test_reused_pid_is_not_mistaken_for_the_holder(project):
    # a lock naming a live process (this one) but another process start time: the PID was reused
    path = project / "runs" / ".lock"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "x",
                                "proc_start": "1", "run_id": "old"}))
    if jobs._proc_start(os.getppid()) is None:
        pytest.skip("no /proc to read process start times")
    with jobs.ProjectLock(project, "me"):
        assert json.loads(path.read_text())["run_id"] == "me"


def test_lock_of_another_host_is_never_cleared(project):
    path = project / "runs" / ".lock"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "started": "x", "run_id": "r"}))
    with pytest.raises(SFRError, match="another machine"):
        jobs.ProjectLock(project, "me").acquire()
    assert path.exists()


def test_status_reports_a_killed_run_as_crashed(project, sfr):
    run = project / "runs" / "20261201-000000-0001"  # a run id: runs/latest names only run ids
    run.mkdir(parents=True)
    (project / "runs" / "latest").write_text("20261201-000000-0001\n")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (run / "status.json").write_text(json.dumps({"state": "running", "run_id": "20261201-000000-0001", "pid": proc.pid,
                                                 "host": socket.gethostname(),
                                                 "proc_start": jobs._proc_start(proc.pid)}))
    out = sfr("status", project, "--json", check=True)
    assert json.loads(out.stdout)["state"] == "running"
    proc.kill()
    proc.wait()
    out = sfr("status", project, "--json", check=True)
    st = json.loads(out.stdout)
    assert st["state"] == "crashed" and "--resume" in st["message"]
