"""Starting, following and stopping ``sfr run`` from the Slicer module.

:class:`SFRJob` is one run.  The command lines come from the engine's run contract
(``SFRSegmenterLib.runcontrol``); the run always starts detached, so closing the scene or Slicer
does not stop it.  The job follows the run through its folder (``events.jsonl`` and
``status.json``), so a run started in an earlier session is followed again the same way
(:meth:`SFRJob.follow`).  Stop asks the engine to stop at its next safe point and, after a grace
period, ends the engine process recorded in ``status.json`` and everything below it (never only
the ``PythonSlicer`` launcher, which forwards no signals).  What the panel shows comes from
:mod:`.progress`; the short launching process runs through a runner (:mod:`.runner`).

Nothing here imports Qt, so everything runs under plain Python and pytest.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from SFRSegmenterLib import jobs as engine_jobs
from SFRSegmenterLib import runcontrol
from SFRSegmenterLib.errors import SFRError
from SFRSegmenterLib.runfolder import RunFolder
from SFRSegmenterLib.runcontrol import RunSettings  # noqa: F401 - the engine owns the settings

from .progress import JobProgress
from .runner import SubprocessRunner, child_environment, sfr_command

#: Menu labels of the engine's backbones and methods (the names come from the engine).
BACKBONE_LABELS = {
    "lite_medsam": "LiteMedSAM (default, CPU friendly)",
    "vit_b": "SAM ViT-B (checkpoint file)",
    "vit_l": "SAM ViT-L (checkpoint file)",
    "vit_h": "SAM ViT-H (checkpoint file)",
    "medsam_vit_b": "MedSAM ViT-B (checkpoint file)",
}
SSL_LABELS = {
    "mean_teacher": "Mean Teacher",
    "ua_mt": "Uncertainty-aware Mean Teacher",
    "self_training": "Self-training",
    "supervised": "Supervised only",
}


def _menu(names, labels, default) -> list:
    ordered = sorted(names, key=lambda name: name != default)  # the default first
    return [(name, labels.get(name, name)) for name in ordered]


BACKBONES = _menu(runcontrol.USER_BACKBONES, BACKBONE_LABELS, RunSettings().backbone)
SSL_METHODS = _menu(runcontrol.SSL_METHODS, SSL_LABELS, RunSettings().ssl)


# --------------------------------------------------------------------------- following a run


class EventTail:
    """New complete lines of a growing file (``events.jsonl``), from a byte offset on.

    :meth:`read` takes at most ``max_bytes`` a call when given, so following a long run from its
    start spreads the file over several timer ticks instead of replaying it in one; ``more``
    says whether the last read stopped before the end of the file.
    """

    def __init__(self, path: "str | os.PathLike", offset: int = 0):
        self.path = Path(path)
        self.offset = offset
        self.more = False
        self._partial = b""

    @staticmethod
    def size(path: "str | os.PathLike") -> int:
        try:
            return Path(path).stat().st_size
        except OSError:
            return 0

    def read(self, max_bytes: "int | None" = None) -> list:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read(-1 if max_bytes is None else max_bytes)
                self.more = max_bytes is not None and len(data) == max_bytes and bool(fh.read(1))
        except OSError:  # not written yet, or the run folder was deleted
            self.more = False
            return []
        self.offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        return [line.decode("utf-8", errors="replace") for line in lines if line.strip()]


#: Job states: ``launching`` (the short ``sfr run --detach`` process), ``running``,
#: ``stopping``, then the run's own final state.
ACTIVE_STATES = ("launching", "running", "stopping")
FINAL_STATES = ("done", "cancelled", "failed", "crashed")


class SFRJob:
    """One run of a project: start or continue it detached, follow it, stop it.

    ``runner`` runs the short launching command (see module docstring).  Callbacks:
    ``on_progress(job)`` after every event, ``on_log(text)`` for every log line,
    ``on_finished(job)`` once the run has ended (``state`` then is ``done``, ``cancelled``,
    ``failed`` or ``crashed``; ``error`` says why a run could not start).  Following a run,
    ``on_progress`` comes once per :meth:`poll`, after at most :attr:`POLL_BYTES` of events.
    """

    #: Bytes of ``events.jsonl`` one :meth:`poll` reads (about a thousand events).
    POLL_BYTES = 128 * 1024

    def __init__(
        self,
        project: "str | os.PathLike",
        settings: RunSettings | None = None,
        runner=None,
        python: str | None = None,
        stop_grace_s: float = 60.0,
    ):
        self.project = Path(project)
        self.settings = settings or RunSettings()
        self.runner = runner or SubprocessRunner()
        self.python = python
        self.stop_grace_s = stop_grace_s
        self.progress = JobProgress()
        self.state = "idle"
        self.action: str | None = None  # "start" or "continue"
        self.args: list | None = None
        self.run_id: str | None = None
        self.status: dict = {}
        self.returncode: int | None = None  # of the launching command
        self.error: str | None = None
        self.ended_pids: list = []
        self._tail: EventTail | None = None
        self._offset = 0
        self._stop_wanted = False
        self._stop_at: float | None = None
        self.on_progress: Callable[["SFRJob"], None] | None = None
        self.on_log: Callable[[str], None] | None = None
        self.on_finished: Callable[["SFRJob"], None] | None = None

    @property
    def run_path(self) -> Path | None:
        return engine_jobs.runs_dir(self.project) / self.run_id if self.run_id else None

    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES

    def start_line(self) -> str:
        """The log line for what :meth:`start` or :meth:`follow` did: the command that starts or
        continues the run, or the run followed."""
        if self.action == "follow":
            return f"following run {self.run_id}, which is still running"
        return ("continuing: " if self.action == "continue" else "starting: ") + " ".join(self.args or [])

    # ---------------------------------------------------------------- start / follow
    def plan(self) -> tuple:
        """``(action, run_id, command line)``: start a new run, or continue the latest one when
        it stopped early (cancelled, failed, crashed) with these settings."""
        action, run_id = runcontrol.next_action(self.project, self.settings)
        if action == "busy":
            raise SFRError(f"run {run_id} is still running in this project: follow it or stop it first",
                           engine_jobs.runs_dir(self.project) / run_id)
        if action == "continue":
            engine_args = runcontrol.continue_command(self.project, device=self.settings.device)
        else:
            engine_args = runcontrol.start_command(self.project, self.settings)
        return action, run_id, sfr_command(*engine_args, python=self.python)

    def start(self, env: dict | None = None) -> None:
        """Launch :meth:`plan`'s command; the run then goes on without this process."""
        self.action, run_id, self.args = self.plan()
        if self.action == "continue":
            self.run_id = run_id
            self._offset = EventTail.size(RunFolder(self.run_path).events)
            self._say(f"continuing run {run_id} where it stopped")
        self.runner.on_line = self._line
        self.runner.on_finished = self._launched
        self.state = "launching"
        self.runner.start(self.args, env=child_environment(env), cwd=str(self.project))

    @classmethod
    def follow(cls, project: "str | os.PathLike", **kwargs) -> "SFRJob | None":
        """A job following the project's run that is still running (started earlier, perhaps in
        another Slicer session), or None when no run is running."""
        status = runcontrol.latest_status(project)
        if status is None or status.get("state") not in runcontrol.ACTIVE:
            return None
        job = cls(project, **kwargs)
        job.action = "follow"
        job._follow(status["run_id"], offset=0)
        return job

    def _follow(self, run_id: str, offset: int) -> None:
        self.run_id = run_id
        self.progress.run_id = run_id
        self._tail = EventTail(RunFolder(self.run_path).events, offset)
        self.state = "running"
        if self._stop_wanted:
            self.stop()

    def _launched(self, returncode: int) -> None:
        self.returncode = returncode
        if returncode != 0:
            errors = [line for line in self.progress.log if ": error: " in line] or self.progress.log[-1:]
            self.error = errors[-1] if errors else f"sfr run exited with status {returncode}"
            self._end("failed")
            return
        run_id = Path(self.progress.run_id or self.run_id or engine_jobs.latest_run_id(self.project)).name
        self._follow(run_id, self._offset if run_id == self.run_id else 0)

    # ---------------------------------------------------------------- polling
    def poll(self) -> None:
        """Deliver new events, notice the run's end, enforce the stop deadline (never blocks)."""
        if self.state == "launching":
            self.runner.poll()
            return
        if not self.is_active() or self._tail is None:
            return
        self._deliver(self._tail.read(self.POLL_BYTES))
        if self._tail.more:
            return  # the rest on the next polls; the end is seen once every event is read
        if not self.run_path.is_dir():
            self.error = f"the run folder {self.run_path} was deleted"
            self._end("failed")
            return
        try:
            self.status = engine_jobs.read_status(self.run_path)
        except SFRError as exc:
            self._say(f"error: {exc}")
            return
        state = self.status.get("state")
        if state in runcontrol.ACTIVE:
            if self._stop_at is not None and time.monotonic() - self._stop_at > self.stop_grace_s:
                self._say("the run did not stop at a safe point in time; ending its processes")
                self.ended_pids = runcontrol.kill_run(self.run_path)
                self._stop_at = None
            return
        if runcontrol.engine_pids(self.run_path):
            return  # final state written; the engine still writes its report and lock
        self._deliver(self._tail.read())
        self.error = self.status.get("error") or (self.error if state == "failed" else None)
        self._end(state if state in FINAL_STATES else "failed")

    def wait(self, timeout_s: float, interval_s: float = 0.1) -> bool:
        """Poll until the job ends (tests, the Slicer self-test); True when it ended."""
        deadline = time.monotonic() + timeout_s
        while self.is_active() and time.monotonic() < deadline:
            self.poll()
            time.sleep(interval_s)
        self.poll()
        return not self.is_active()

    # ---------------------------------------------------------------- stop
    def stop(self) -> None:
        """Stop the run: at its next safe point, or by ending its processes after ``stop_grace_s``."""
        if self.state == "launching":
            self._stop_wanted = True  # the run id is not known yet; stop it once it is
            self._say("stopping: the run will be stopped as soon as it has started")
            return
        if self.state != "running":
            return
        self.state = "stopping"
        self._stop_at = time.monotonic()
        try:
            runcontrol.request_stop(self.project, self.run_id)
        except SFRError as exc:
            self._say(f"error: {exc}")
        self._say("stopping: asking the engine to stop at its next safe point (everything done is kept)")

    # ---------------------------------------------------------------- callbacks
    def _say(self, text: str) -> None:
        self.progress.log.append(text)
        if self.on_log:
            self.on_log(text)

    def _line(self, line: str, notify: bool = True) -> bool:
        """Feed one line; True when it was an event (``on_progress`` called when ``notify``)."""
        before = len(self.progress.log)
        event = self.progress.feed(line)
        for text in self.progress.log[before:]:
            if self.on_log:
                self.on_log(text)
        if event is not None and notify and self.on_progress:
            self.on_progress(self)
        return event is not None

    def _deliver(self, lines: list) -> None:
        """Feed the lines of one poll; ``on_progress`` once after them (not once per event)."""
        events_seen = [self._line(line, notify=False) for line in lines]
        if any(events_seen) and self.on_progress:
            self.on_progress(self)

    def _end(self, state: str) -> None:
        self.state = state
        if self.on_finished:
            self.on_finished(self)
