"""The Slicer module's background job: event parsing, a real subprocess, cancel and shutdown."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SFRSegmenter"))

from SFRSegmenterLib import events  # noqa: E402
from SFRSegmenterLogicLib import jobs  # noqa: E402


def test_parse_event_line():
    line = json.dumps({"event": "progress", "stage": "finetune", "step": 3, "total": 10, "eta_s": 12.5, "new_key": 1})
    assert jobs.parse_event_line(line + "\n")["new_key"] == 1
    assert jobs.parse_event_line(line.encode())["stage"] == "finetune"
    assert jobs.parse_event_line("Warning: something from a library") is None
    assert jobs.parse_event_line("{not json") is None
    assert jobs.parse_event_line("[1, 2]") is None
    assert jobs.parse_event_line('{"stage": "x"}') is None  # no event kind
    assert jobs.parse_event_line("   ") is None


def test_parse_accepts_what_the_engine_emits(capsys):
    events.configure("json")
    try:
        events.stage("pseudolabel", "start")
        events.Progress("pseudolabel", 4, min_interval=0).update(2, loss=0.5)
        events.log("hello", level="warning")
    finally:
        events.configure("auto")
    progress = jobs.JobProgress()
    for line in capsys.readouterr().out.splitlines():
        assert progress.feed(line) is not None
    assert (progress.stage, progress.step, progress.total) == ("pseudolabel", 2, 4)
    assert progress.percent == 50
    assert progress.log[-1] == "warning: hello"


def test_job_progress_sequence():
    p = jobs.JobProgress()
    assert p.status_text() == "Starting..."
    p.feed('{"event": "stage", "stage": "stitch", "status": "start"}')
    p.feed('{"event": "progress", "stage": "stitch", "step": 5, "total": 20, "eta_s": 3725}')
    assert p.percent == 25 and p.status_text() == "stitch: 5/20, ETA 1:02:05"
    p.feed('{"event": "stage", "stage": "stitch", "status": "done"}')
    p.feed('{"event": "stage", "stage": "finetune", "status": "start"}')
    assert (p.stage, p.step, p.total, p.eta_s) == ("finetune", 0, 0, None)
    p.feed('{"event": "log", "level": "error", "message": "out of memory", "run_id": "r1"}')
    p.feed("Traceback (most recent call last):")
    p.feed('{"event": "something_new", "x": 1}')
    p.feed('{"event": "progress", "stage": "finetune", "step": "bad", "total": null}')
    assert p.stages_done == ["stitch"]
    assert p.errors == ["out of memory"] and p.run_id == "r1"
    assert p.log[-1] == "Traceback (most recent call last):"
    assert jobs.format_eta(65) == "01:05" and jobs.format_eta(None) == "--" and jobs.format_eta("x") == "--"


def run_until_done(job, timeout=120):
    deadline = time.monotonic() + timeout
    while job.is_active() and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.05)
    job.poll()
    return job


def test_job_runs_a_real_engine_command_and_reports_progress(tmp_path, sample_dir):
    project = tmp_path / "proj"
    args = jobs.sfr_command(
        "--progress", "json", "init", project, "--images", sample_dir / "images",
        "--labels", sample_dir / "labels", "--labeled", "2", python=sys.executable,
    )
    job = jobs.SFRJob(project, runner=jobs.SubprocessRunner(), args=args)
    seen, logs, finished = [], [], []
    job.on_progress = lambda j: seen.append((j.progress.stage, j.progress.step, j.progress.total))
    job.on_log = logs.append
    job.on_finished = lambda j: finished.append(j.state)
    job.start()
    assert job.state == "running"
    run_until_done(job)
    assert finished == ["finished"] and job.returncode == 0
    assert seen and seen[-1] == ("check", 12, 12)
    assert all(total == 12 for _, _, total in seen)
    assert (project / "sfr-project.json").exists()
    assert any("created" in line for line in logs)  # the plain summary line reaches the log


def test_job_failure_is_reported(tmp_path):
    args = jobs.sfr_command("--progress", "json", "info", tmp_path / "missing", python=sys.executable)
    job = jobs.SFRJob(tmp_path / "missing", args=args)
    job.start()
    run_until_done(job)
    assert job.state == "failed" and job.returncode == 2
    assert any("not an SFR project" in line for line in job.progress.log)


SLOW = textwrap.dedent(
    """
    import json, signal, sys, time
    if "--ignore-term" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for i in range(100000):
        print(json.dumps({"event": "progress", "stage": "finetune", "step": i, "total": 100000, "eta_s": 9}), flush=True)
        time.sleep(0.05)
    """
)


def test_cancel_stops_a_job_that_does_not_stop_by_itself(tmp_path):
    script = tmp_path / "slow.py"
    script.write_text(SLOW)
    job = jobs.SFRJob(tmp_path, args=[sys.executable, str(script)], python=sys.executable, cancel_grace_s=1.0, kill_grace_s=1.0)
    job.start()
    deadline = time.monotonic() + 30
    while job.progress.step < 3 and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.05)
    assert job.progress.stage == "finetune" and job.progress.step >= 3
    t0 = time.monotonic()
    job.cancel()
    assert job.state == "cancelling"
    run_until_done(job, timeout=30)
    assert job.state == "cancelled" and job.returncode != 0
    assert time.monotonic() - t0 < 15
    assert not job.runner.is_running()


def test_shutdown_kills_a_job_that_ignores_terminate(tmp_path):
    script = tmp_path / "slow.py"
    script.write_text(SLOW)
    job = jobs.SFRJob(tmp_path, args=[sys.executable, str(script), "--ignore-term"], python=sys.executable, cancel_grace_s=0.5, kill_grace_s=0.5)
    job.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    job.shutdown(timeout_s=0.5)
    assert not job.runner.is_running()
    assert time.monotonic() - t0 < 10
    assert job.state == "cancelled" and job.returncode == -9


def test_run_command_line_from_settings(tmp_path):
    s = jobs.RunSettings(backbone="vit_b", checkpoint="/w/sam.pth", ssl="ua_mt", sfr_plus=True, device="cuda:0", resume=True)
    job = jobs.SFRJob(tmp_path, settings=s, python="py")
    assert job.args == [
        "py", "-m", "SFRSegmenterLib", "--progress", "json", "run", str(tmp_path),
        "--backbone", "vit_b", "--ssl", "ua_mt", "--device", "cuda:0", "--checkpoint", "/w/sam.pth",
        "--sfr-plus", "--resume",
    ]
    plain = jobs.RunSettings(sfr_plus=False).run_options()
    assert "--sfr-plus" not in plain and "--checkpoint" not in plain and "--resume" not in plain
    env = jobs.child_environment({"PATH": "/bin"})
    assert env["PYTHONPATH"].split(__import__("os").pathsep)[0] == str(REPO)
    assert env["PYTHONUNBUFFERED"] == "1"
