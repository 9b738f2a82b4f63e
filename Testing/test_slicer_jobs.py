"""The Slicer module's runs: the engine's run contract, real detached runs, stop, continue, follow.

Every command line the module sends is parsed by the engine's own parser; the run tests start
the real engine (tiny test backbone) through a launcher-like parent that, like Slicer's
``PythonSlicer``, runs the real interpreter as a child and forwards no signals.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SFRSegmenter"))

from SFRSegmenterLib import events, runcontrol  # noqa: E402
from SFRSegmenterLib import jobs as engine_jobs  # noqa: E402
from SFRSegmenterLib.cli import build_parser  # noqa: E402
from SFRSegmenterLib.commands.run import CONFIG_OPTIONS, config_from_args  # noqa: E402
from SFRSegmenterLogicLib import jobs  # noqa: E402
from SFRSegmenterLogicLib import runner as process_runner  # noqa: E402
from SFRSegmenterLogicLib import progress as progress_view  # noqa: E402

CASES = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006"]
#: Long enough fine-tuning (tiny model) to be caught mid-stage, short enough for CI.
TINY = runcontrol.RunSettings(backbone="tiny_test", device="cpu", sfr_plus=False, iterations_sam=60,
                              iterations_vnet=4, vnet_options={"filters": 4}, report=False)


# --------------------------------------------------------------------------- events


def test_parse_event_line():
    line = json.dumps({"event": "progress", "stage": "finetune", "step": 3, "total": 10, "eta_s": 12.5, "new_key": 1})
    assert progress_view.parse_event_line(line + "\n")["new_key"] == 1
    assert progress_view.parse_event_line(line.encode())["stage"] == "finetune"
    assert progress_view.parse_event_line("Warning: something from a library") is None
    assert progress_view.parse_event_line("{not json") is None
    assert progress_view.parse_event_line("[1, 2]") is None
    assert progress_view.parse_event_line('{"stage": "x"}') is None  # no event kind
    assert progress_view.parse_event_line("   ") is None


def test_parse_accepts_what_the_engine_emits(capsys):
    events.configure("json")
    try:
        events.stage("pseudolabel", "start", pipeline=True, index=3, of=4)
        events.Progress("pseudolabel", 4, min_interval=0).update(2, loss=0.5)
        events.log("hello", level="warning")
    finally:
        events.configure("auto")
    progress = progress_view.JobProgress()
    for line in capsys.readouterr().out.splitlines():
        assert progress.feed(line) is not None
    assert (progress.stage, progress.step, progress.total) == ("pseudolabel", 2, 4)
    assert (progress.stage_index, progress.stages_total) == (3, 4)
    assert progress.percent == round(100 * 2.5 / 4)  # two stages done, half of the third
    assert progress.log[-1] == "warning: hello"


def test_job_progress_sequence():
    p = progress_view.JobProgress()
    assert p.status_text() == "Starting..."
    p.feed('{"event": "stage", "stage": "stitch", "status": "start"}')
    p.feed('{"event": "progress", "stage": "stitch", "step": 5, "total": 20, "eta_s": 3725}')
    assert p.percent == 25 and p.status_text() == "stitch: 5/20, ETA 1:02:05"
    p.feed('{"event": "stage", "stage": "stitch", "status": "done"}')
    p.feed('{"event": "stage", "stage": "finetune", "status": "start", "pipeline": true, "index": 2, "of": 5}')
    assert (p.stage, p.step, p.total, p.eta_s) == ("finetune", 0, 0, None)
    assert p.percent == 20 and p.status_text() == "stage 2/5 finetune"
    p.feed('{"event": "log", "level": "error", "message": "out of memory", "run_id": "r1"}')
    p.feed("Traceback (most recent call last):")
    p.feed('{"event": "something_new", "x": 1}')
    p.feed('{"event": "progress", "stage": "finetune", "step": "bad", "total": null}')
    assert p.stages_done == ["stitch"]
    assert p.errors == ["out of memory"] and p.run_id == "r1"
    assert p.log[-1] == "Traceback (most recent call last):"
    assert "ETA 01:05" in progress_view.JobProgress(stage="x", step=1, total=2, eta_s=65).status_text()
    assert "ETA --" in progress_view.JobProgress(stage="x", step=1, total=2, eta_s=None).status_text()


def test_event_tail_reads_complete_lines_only(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = jobs.EventTail(path)
    assert tail.read() == []  # not written yet
    path.write_bytes(b'{"event": "log", "message": "a"}\n{"event": "lo')
    assert tail.read() == ['{"event": "log", "message": "a"}']
    with open(path, "ab") as fh:
        fh.write(b'g", "message": "b"}\n')
    assert tail.read() == ['{"event": "log", "message": "b"}']
    assert jobs.EventTail(path, jobs.EventTail.size(path)).read() == []


def test_following_a_long_run_reads_its_events_over_several_polls(tmp_path):
    """Following a run from its start (after a restart) does not replay a long events.jsonl in one
    timer tick: each poll reads at most POLL_BYTES and updates the progress once; the end is seen
    only after the last event."""
    run_id = "20260101-100000-0abc"
    run = engine_jobs.runs_dir(tmp_path) / run_id
    run.mkdir(parents=True)
    total = 20000
    with open(run / "events.jsonl", "w") as fh:
        fh.write(json.dumps({"event": "stage", "stage": "finetune", "status": "start", "pipeline": True,
                             "index": 2, "of": 5}) + "\n")
        for step in range(1, total + 1):
            fh.write(json.dumps({"event": "progress", "stage": "finetune", "step": step, "total": total,
                                 "eta_s": 1.0}) + "\n")
    size = (run / "events.jsonl").stat().st_size
    assert size > 5 * jobs.SFRJob.POLL_BYTES
    (run / engine_jobs.STATUS_NAME).write_text(json.dumps({"run_id": run_id, "state": "running"}))
    engine_jobs.set_latest(tmp_path, run_id)
    job = jobs.SFRJob.follow(tmp_path)
    assert job is not None and job.run_id == run_id
    assert job.start_line() == f"following run {run_id}, which is still running"  # the panel's log line
    updates, finished = [], []
    job.on_progress = lambda j: updates.append(j.progress.step)
    job.on_finished = finished.append
    job.poll()
    assert len(updates) == 1 and 0 < updates[0] < total  # one update, for part of the file
    assert job._tail.offset <= jobs.SFRJob.POLL_BYTES
    (run / engine_jobs.STATUS_NAME).write_text(json.dumps({"run_id": run_id, "state": "done"}))
    polls = 1
    while job.is_active() and polls < 1000:
        job.poll()
        polls += 1
    assert polls >= size // jobs.SFRJob.POLL_BYTES
    assert finished == [job] and job.state == "done"
    assert updates[-1] == total and updates == sorted(updates)  # every event read before the end
    assert job._tail.offset == size


def test_runner_runs_a_real_engine_command(tmp_path, sample_dir):
    project = tmp_path / "proj"
    runner, lines, ended = process_runner.SubprocessRunner(), [], []
    runner.on_line, runner.on_finished = lines.append, ended.append
    runner.start(process_runner.sfr_command("--progress", "json", "init", project, "--images", sample_dir / "images",
                                  "--labels", sample_dir / "labels", "--labeled", "2", python=sys.executable),
                 env=process_runner.child_environment())
    assert runner.wait(120) and ended == [0]
    progress = progress_view.JobProgress()
    for line in lines:
        progress.feed(line)
    assert (progress.stage, progress.step, progress.total) == ("check", 12, 12)
    assert (project / "sfr-project.json").exists()


# --------------------------------------------------------------------------- the run contract


def engine_parse(args):
    """``args`` (after ``python -m SFRSegmenterLib``) through the engine's real parser."""
    return build_parser().parse_args([str(a) for a in args])


SETTINGS_GRID = [
    runcontrol.RunSettings(backbone=b, checkpoint=c, ssl=s, sfr_plus=p, device=d)
    for b, c, s, p, d in itertools.product(
        (*runcontrol.USER_BACKBONES, "tiny_test"), ("", "/w/sam model.pth"), runcontrol.SSL_METHODS,
        (True, False), ("auto", "cpu", "cuda:0", "mps"))
]


def test_every_settings_combination_is_a_command_line_the_engine_accepts(tmp_path):
    for settings in SETTINGS_GRID:
        job = jobs.SFRJob(tmp_path, settings=settings, python="PythonSlicer")
        action, _, args = job.plan()
        assert action == "start" and args[:3] == ["PythonSlicer", "-m", "SFRSegmenterLib"]
        parsed = engine_parse(args[3:])
        assert (parsed.command, parsed.project, parsed.detach, parsed.resume) == ("run", str(tmp_path), True, False)
        cfg = config_from_args(parsed)  # the engine's own checks of the options
        assert (cfg.backbone, cfg.ssl, cfg.sfr_plus, cfg.device) == (
            settings.backbone, settings.ssl, settings.sfr_plus, settings.device)
        assert cfg.checkpoint == (settings.checkpoint or None)
        # the continue form: only options --resume accepts
        cont = engine_parse(runcontrol.continue_command(tmp_path, device=settings.device))
        assert cont.resume and cont.detach and cont.device == settings.device
        assert [n for n in CONFIG_OPTIONS if getattr(cont, n, None) not in (None, False, [])] == []
    stop = engine_parse(runcontrol.stop_command(tmp_path, timeout_s=30))
    assert (stop.command, stop.wait, stop.timeout, stop.kill) == ("cancel", True, 30.0, True)


def test_run_options_round_trip_through_the_engine():
    settings = dataclasses.replace(TINY, sam_options={"lora_rank": 8}, checkpoint="")
    cfg = config_from_args(engine_parse(runcontrol.start_command("P", settings)))
    assert (cfg.iterations_sam, cfg.iterations_vnet, cfg.report) == (60, 4, False)
    assert cfg.vnet_options == {"filters": 4} and cfg.sam_options == {"lora_rank": 8}
    assert runcontrol.config_of(settings) == runcontrol.config_of(dataclasses.replace(settings, device="cuda"))
    assert runcontrol.config_of(settings) != runcontrol.config_of(dataclasses.replace(settings, ssl="ua_mt"))


def test_the_module_never_spells_engine_flags():
    """Every ``sfr run``/``cancel`` flag comes from the engine's run contract."""
    run_flags = set()
    for action in build_parser()._subparsers._group_actions[0].choices["run"]._actions:
        run_flags.update(o for o in action.option_strings if o.startswith("--"))
    sources = list((REPO / "SFRSegmenter").rglob("*.py"))
    for path in sources:
        text = path.read_text(encoding="utf-8")
        spelled = {flag for flag in run_flags if re.search(rf"[\"']{re.escape(flag)}[\"' =]", text)}
        assert not spelled, f"{path.name} spells engine flags {sorted(spelled)}"


def test_menus_list_the_engine_names():
    assert [name for name, _ in jobs.BACKBONES] [0] == runcontrol.RunSettings().backbone
    assert {name for name, _ in jobs.BACKBONES} == set(runcontrol.USER_BACKBONES)
    assert "tiny_test" not in dict(jobs.BACKBONES)
    assert {name for name, _ in jobs.SSL_METHODS} == set(runcontrol.SSL_METHODS)


def make_run(project, settings, state, pid=None):
    """A run folder as the engine makes it (``create_run``) with a given state."""
    from SFRSegmenterLib.manifest import load_project
    from SFRSegmenterLib.run.job import create_run

    cfg = config_from_args(engine_parse(runcontrol.start_command(project, settings)))
    number = len(list(engine_jobs.runs_dir(project).glob("2*")))
    path = create_run(load_project(project), cfg, run_id=f"20260101-0000{number:02d}-abcd")
    status = {"state": state, "run_id": path.name}
    if pid:
        status.update(pid=pid, host=__import__("socket").gethostname(), proc_start=engine_jobs._proc_start(pid))
    (path / "status.json").write_text(json.dumps(status))
    return path


def test_next_action_continues_only_a_stopped_run_with_the_same_settings(tmp_path, sample_dir):
    from test_run_pipeline import make_project

    root = make_project(tmp_path / "proj", sample_dir, CASES, labeled=2, validation=0)
    assert runcontrol.next_action(root, TINY) == ("start", None)
    for state in ("cancelled", "failed"):
        run = make_run(root, TINY, state)
        assert runcontrol.next_action(root, TINY) == ("continue", run.name)
        assert runcontrol.next_action(root, dataclasses.replace(TINY, device="auto")) == ("continue", run.name)
        assert runcontrol.next_action(root, dataclasses.replace(TINY, iterations_sam=61)) == ("start", None)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = make_run(root, TINY, "running", pid=dead.pid)  # its process is gone: crashed
    assert runcontrol.next_action(root, TINY) == ("continue", run.name)
    run = make_run(root, TINY, "running", pid=os.getpid())
    assert runcontrol.next_action(root, TINY) == ("busy", run.name)
    with pytest.raises(Exception, match="still running"):
        jobs.SFRJob(root, TINY).plan()
    make_run(root, TINY, "done")
    assert runcontrol.next_action(root, TINY) == ("start", None)
    assert [st["run_id"] for st in runcontrol.finished_runs(root)] == [runcontrol.latest_status(root)["run_id"]]


# --------------------------------------------------------------------------- real runs behind a launcher

LAUNCHER = textwrap.dedent(
    """\
    #!{python}
    # Like Slicer's PythonSlicer: start the real interpreter as a child with the same arguments,
    # forward no signal to it, exit with its status.
    import subprocess, sys
    sys.exit(subprocess.call([{python!r}, *sys.argv[1:]]))
    """
)


def make_launcher(folder: Path) -> str:
    path = folder / "PythonSlicer"
    path.write_text(LAUNCHER.format(python=sys.executable))
    path.chmod(0o755)
    return str(path)


def wait_for(predicate, timeout=120, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def finetune_attempts(run):
    """Fine-tuning progress steps per attempt of the run (events.jsonl)."""
    attempts, current = [], None
    for line in (run / "events.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e["event"] == "stage" and e.get("pipeline") and e["status"] == "start":
            current = e["stage"]
            if current.startswith("finetune"):
                attempts.append([])
        elif e["event"] == "progress" and current and current.startswith("finetune") and attempts \
                and e["stage"] == "finetune":  # the training loop's steps, not the embedding cache's
            attempts[-1].append(e["step"])
    return [a for a in attempts if a]


def running_step(job, at_least):
    job.poll()
    return job.state == "running" and job.progress.stage.startswith("finetune") and job.progress.step >= at_least


def alive(pid):
    return engine_jobs.pid_alive(pid)


@pytest.mark.skipif(os.name == "nt", reason="POSIX launcher script and SIGSTOP")
def test_stop_continue_and_follow_a_real_run_behind_a_launcher(tmp_path, sample_dir):
    from test_run_pipeline import make_project

    root = make_project(tmp_path / "proj", sample_dir, CASES, labeled=2, validation=0)
    launcher = make_launcher(tmp_path)
    job = jobs.SFRJob(root, TINY, python=launcher, stop_grace_s=300)
    job.start()
    assert job.state == "launching" and job.args[0] == launcher
    assert job.start_line() == "starting: " + " ".join(job.args)  # the panel's log line
    wait_for(lambda: running_step(job, 3), what="fine-tuning to start")
    run_id, first_pid = job.run_id, job.status["pid"]
    assert job.progress.run_id == run_id and 0 < job.progress.percent < 100
    assert not job.runner.is_running()  # the launching command has returned; the run goes on
    assert "SFRSegmenterLib" in " ".join(__import__("psutil").Process(first_pid).cmdline())

    # Stop: the engine stops at its next safe point, with what it did saved
    job.stop()
    assert job.state == "stopping"
    assert job.wait(300), job.progress.log[-20:]
    assert job.state == "cancelled" and not alive(first_pid)

    # Run again with the same settings, from a new job (as after a Slicer restart): it continues
    again = jobs.SFRJob(root, TINY, python=launcher)
    action, rid, args = again.plan()
    assert (action, rid) == ("continue", run_id) and "--resume" in args
    assert jobs.SFRJob(root, dataclasses.replace(TINY, ssl="supervised")).plan()[0] == "start"
    again.start()
    assert again.start_line() == "continuing: " + " ".join(again.args) and "--resume" in again.start_line()
    wait_for(lambda: running_step(again, 1), what="the continued run")
    assert again.run_id == run_id

    # The panel was closed and opened again: the running run is found and followed
    follower = jobs.SFRJob.follow(root, stop_grace_s=1.0)
    assert follower is not None and follower.run_id == run_id and follower.state == "running"
    follower.poll()
    engine = follower.status["pid"]
    # the engine hangs (a stuck driver call): Stop ends its process after the grace period
    os.kill(engine, signal.SIGSTOP)
    follower.stop()
    assert follower.wait(60), follower.progress.log[-20:]
    assert follower.state == "crashed" and engine in follower.ended_pids and not alive(engine)

    # a crashed run continues too, to the end, without redoing finished fine-tuning steps
    final = jobs.SFRJob(root, TINY, python=launcher)
    assert final.plan()[:2] == ("continue", run_id)
    final.start()
    assert final.wait(600), final.progress.log[-30:]
    assert final.state == "done", (final.error, final.progress.log[-30:])
    run = root / "runs" / run_id
    assert (run / "review.json").exists()
    attempts = finetune_attempts(run)
    assert len(attempts) >= 2 and attempts[1][0] > 1, attempts  # continued, not restarted
    assert [st["run_id"] for st in runcontrol.finished_runs(root)] == [run_id]
    assert not (root / "runs" / ".lock").exists()


@pytest.mark.skipif(os.name == "nt", reason="POSIX launcher script and SIGSTOP")
def test_stop_command_reaches_an_engine_whose_launcher_forwards_no_signals(tmp_path, sample_dir):
    import psutil

    from test_run_pipeline import make_project

    root = make_project(tmp_path / "proj", sample_dir, CASES, labeled=2, validation=0)
    launcher = make_launcher(tmp_path)
    env = process_runner.child_environment()
    # a run in the foreground of its launcher (what QProcess would start without --detach)
    args = process_runner.sfr_command(*runcontrol.start_command(root, TINY, detach=False, progress="none"), python=launcher)
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    status = wait_for(lambda: (s := runcontrol.latest_status(root)) and s.get("substage", "").startswith("finetune")
                      and (s.get("step") or 0) >= 2 and s, what="fine-tuning to start")
    engine = status["pid"]
    assert engine != proc.pid and psutil.Process(engine).ppid() == proc.pid
    # what stopping the launcher alone does: the engine goes on
    proc.kill()
    proc.wait(10)
    time.sleep(0.5)
    assert alive(engine)
    os.kill(engine, signal.SIGSTOP)  # and now it hangs
    stop = subprocess.run(process_runner.sfr_command(*runcontrol.stop_command(root, timeout_s=2), python=launcher),
                          env=env, capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0, stop.stderr
    assert "ended process" in stop.stdout and str(engine) in stop.stdout
    assert not alive(engine)
    assert runcontrol.latest_status(root)["state"] == "crashed"
    # `--kill` without `--wait` is refused before anything is written
    bad = subprocess.run(process_runner.sfr_command("cancel", root, "--kill", python=sys.executable), env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--kill needs --wait" in bad.stderr
