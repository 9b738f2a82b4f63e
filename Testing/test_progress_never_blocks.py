"""A ``--progress json`` reader that stops reading never stops the work (issue 24, item 3).

A real ``sfr run`` subprocess whose stdout is a real pipe, shrunk to one page (4 KiB) and never
read: before the fix the run blocked in ``events.emit`` with ``status.json`` frozen at "running"
and the project lock held.  Now it finishes (status done, lock released), and ``sfr cancel`` still
stops a longer one.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_sfr
from test_safety import TINY, make_project

pytestmark = pytest.mark.skipif(not hasattr(fcntl, "F_SETPIPE_SZ"), reason="needs Linux pipes")


def _start_unread(*args):
    """``sfr ARGS`` with stdout on a one-page pipe nobody reads; returns (process, read end)."""
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "SFRSegmenterLib", *map(str, args)], stdout=w,
                            stderr=subprocess.DEVNULL, env=env)
    os.close(w)
    return proc, r


def _state(root):
    run = root / "runs" / (root / "runs" / "latest").read_text().strip()
    return json.loads((run / "status.json").read_text())["state"], run


def test_a_run_whose_json_reader_never_reads_finishes(tmp_path):
    root = make_project(tmp_path)
    proc, r = _start_unread("--progress", "json", "run", root, *TINY)
    try:
        code = proc.wait(timeout=240)  # before the fix: still waiting here, status "running"
    finally:
        proc.kill()
        proc.wait()
    state, run = _state(root)
    assert code == 0
    assert state == "done"
    assert not (root / "runs" / ".lock").exists()  # the project lock released
    events = (run / "events.jsonl").read_text().splitlines()
    assert len(events) > 30 and sum(map(len, events)) > 4096  # more than the pipe holds
    os.close(r)


def test_cancel_stops_a_run_whose_json_reader_never_reads(tmp_path):
    root = make_project(tmp_path)
    long = list(TINY)
    long[long.index("--iterations-vnet") + 1] = "100000"
    proc, r = _start_unread("--progress", "json", "run", root, *long)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # wait until the V-Net trains, well past a full pipe
            if (root / "runs" / "latest").exists():
                state, run = _state(root)
                ev = run / "events.jsonl"
                if ev.exists() and '"retrain"' in ev.read_text() and '"progress"' in ev.read_text().split('"retrain"', 1)[1]:
                    break
            time.sleep(0.5)
        assert run_sfr("cancel", root).returncode == 0
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.wait()
        os.close(r)
    state, _ = _state(root)
    assert state == "cancelled", state
    assert code == 3  # jobs.EXIT_CANCELLED
