"""Background runs: --detach, status, cancel then --resume, kill -9 then --resume, one run per project.

Every run here is a real detached process started by ``sfr run --detach``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO
from test_run_pipeline import make_project, latest, stages

COMMON = ["--backbone", "tiny_test", "--device", "cpu", "--vnet-option", "filters=4", "--no-report"]
#: SAM fine-tuning (tiny model) long enough to be caught mid-stage by a signal, short enough for CI.
JOB = ["--iterations-sam", "400", "--iterations-vnet", "4", *COMMON]
#: The same, for a run held still (SIGSTOP) while other commands start: it resumes the rest.
JOB_PAUSED = ["--iterations-sam", "100", "--iterations-vnet", "4", *COMMON]
#: The same for V-Net re-training.
JOB_KILL = ["--iterations-sam", "3", "--iterations-vnet", "12", *COMMON]
CASES = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006"]


def wait_for(predicate, timeout=90, what="condition"):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def status(sfr, root, cli=False):
    """The run's status: through ``sfr status --json`` (cli) or read directly (fast polling)."""
    if cli:
        return json.loads(sfr("status", root, "--json", check=True).stdout)
    from SFRSegmenterLib import jobs

    return jobs.read_status(jobs.run_dir(root))


def progress_steps(run, stage_name):
    """Progress steps reported while pipeline stage ``stage_name`` ran, per attempt."""
    attempts, current = [], None
    kind = stage_name.rsplit("-r", 1)[0]  # the training's own steps, not the embedding cache's ("embed")
    for line in (run / "events.jsonl").read_text().splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        if e["event"] == "stage" and e.get("pipeline") and e["status"] == "start":
            current = e["stage"]
            if current == stage_name:
                attempts.append([])
        elif e["event"] == "progress" and current == stage_name and attempts and e.get("stage") == kind:
            attempts[-1].append(e["step"])
    return attempts


def test_detach_cancel_resume_and_a_second_run_is_refused(tmp_path, sample_dir, sfr):
    root = make_project(tmp_path / "proj", sample_dir, CASES, labeled=2, validation=0)
    out = sfr("run", root, *JOB_PAUSED, "--detach", check=True)
    run_id = out.stdout.strip().splitlines()[-1]
    run = root / "runs" / run_id
    assert run.is_dir() and latest(root) == run
    assert status(sfr, root)["state"] in ("starting", "running")  # returned at once, not after the run
    st = wait_for(lambda: (s := status(sfr, root)).get("substage") == "finetune" and (s.get("step") or 0) >= 3 and s,
                  what="fine-tuning to start")
    assert st["state"] == "running" and st["run_id"] == run_id
    pid = st["pid"]
    assert pid != os.getpid()
    # the run is held still (a live process holding the lock, mid-stage) while the next commands
    # start, so that none of them depends on how fast the machine trains
    os.kill(pid, signal.SIGSTOP)
    try:
        # a second run on the same project is refused while this one writes
        second = sfr("run", root, *JOB_PAUSED)
        assert second.returncode == 2 and "busy" in second.stderr
        # cancel: asked while the run is held, seen at its next safe point, with the checkpoint saved
        canceller = subprocess.Popen([sys.executable, "-m", "SFRSegmenterLib", "cancel", str(root), "--wait",
                                      "--timeout", "120"], env=dict(os.environ, PYTHONPATH=str(REPO)),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: (run / "cancel-request").exists() or canceller.poll() is not None, what="the cancel request")
    finally:
        os.kill(pid, signal.SIGCONT)
    out, err = canceller.communicate(timeout=150)
    assert canceller.returncode == 0, err
    assert "cancelled" in out
    st = status(sfr, root, cli=True)
    assert st["state"] == "cancelled" and "--resume" in st["message"]
    cancelled = [k for k, v in st["stages"].items() if v["status"] == "cancelled"]
    assert len(cancelled) == 1  # the stage that was running (normally finetune-r0)
    stage = cancelled[0]
    assert all(v["status"] == "done" for k, v in st["stages"].items() if k != stage)
    assert not (root / "runs" / ".lock").exists()
    before = progress_steps(run, stage)
    # resume in the foreground: continues from the checkpoint and finishes everything
    sfr("run", root, "--resume", check=True)
    st = status(sfr, root, cli=True)
    assert st["state"] == "done"
    assert stages(run)[stage]["status"] == "done" and stages(run)[stage]["attempts"] == 2
    attempts = progress_steps(run, stage)
    assert len(attempts) == 2
    # the estimate of the resumed attempt reuses the step times timed by the first (same machine)
    first, second = [e for e in map(json.loads, (run / "events.jsonl").read_text().splitlines())
                     if e["event"] == "estimate"]
    assert first["calibration_reused"] == [] and second["calibration_reused"] == ["sam", "vnet"]
    assert second["steps"] == first["steps"] and (run / "calibration.json").exists()
    if stage.startswith(("finetune", "retrain")) and before[0]:
        # a training stage continues from its checkpoint, not from step 1
        assert attempts[1][0] > 1
    for case in CASES[2:]:
        for suffix in (".nii.gz", "_confidence.nii.gz", "_lowconf.nii.gz"):
            assert (run / "pseudo" / f"{case}{suffix}").exists()
    assert len(json.loads((run / "review.json").read_text())["cases"]) == 2
    # nothing left to resume
    again = sfr("run", root, "--resume", check=True)
    assert "already complete" in again.stdout


def test_kill_9_mid_stage_then_resume(tmp_path, sample_dir, sfr):
    root = make_project(tmp_path / "proj", sample_dir, CASES, labeled=2, validation=0)
    run_id = sfr("run", root, *JOB_KILL, "--detach", check=True).stdout.strip().splitlines()[-1]
    run = root / "runs" / run_id
    st = wait_for(lambda: (s := status(sfr, root)).get("stage") == "retrain-r0" and (s.get("step") or 0) >= 2 and s,
                  timeout=120, what="re-training to start")
    os.kill(st["pid"], signal.SIGKILL)
    st = status(sfr, root, cli=True)
    assert st["state"] == "crashed"
    assert "--resume" in st["message"]
    assert (root / "runs" / ".lock").exists()  # left behind by the killed process
    before = stages(run)
    assert before["finetune-r0"]["status"] == "done" and before["retrain-r0"]["status"] == "running"
    out = sfr("run", root, "--resume", check=True)
    assert "stale lock" in out.stderr
    after = stages(run)
    assert all(rec["status"] == "done" for rec in after.values())
    # finished stages were not redone: same records, and the resumed run skipped them
    for name in ("stitch", "finetune-r0", "pseudolabel-r0"):
        assert after[name]["finished"] == before[name]["finished"]
    log = (run / "log.txt").read_text()
    assert "stage finetune-r0 skipped (finished earlier in this run)" in log
    assert "retrain-r0: resuming" in log
    assert len(json.loads((run / "review.json").read_text())["cases"]) == 2
    assert status(sfr, root)["state"] == "done"


@pytest.mark.parametrize("signame", ["SIGTERM"])
def test_sigterm_is_a_cancel(tmp_path, sample_dir, sfr, signame):
    root = make_project(tmp_path / "proj", sample_dir, CASES, labeled=2, validation=0)
    sfr("run", root, *JOB, "--detach", check=True)
    st = wait_for(lambda: (s := status(sfr, root)).get("substage") == "finetune" and (s.get("step") or 0) >= 2 and s,
                  what="fine-tuning to start")
    os.kill(st["pid"], getattr(signal, signame))
    st = wait_for(lambda: (s := status(sfr, root))["state"] != "running" and s, what="stop")
    assert st["state"] == "cancelled"
