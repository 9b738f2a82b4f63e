"""Running ``sfr run`` as a separate process and following its progress.

Three small pieces, kept apart so each can be replaced or tested on its own:

* :func:`parse_event_line` / :class:`JobProgress` turn the engine's JSON-line events
  (``SFRSegmenterLib.events``) into what the panel shows: stage, step/total, ETA, log lines.
* A *runner* starts one process and reports its output lines and its end.  The Slicer widget
  uses a ``QProcess`` runner (``SFRSegmenter.py``); :class:`SubprocessRunner` here is the plain
  Python one (a reader thread and a ``poll()`` the caller drives from a timer).  Both have
  ``start(args, env, cwd)``, ``poll()``, ``is_running()``, ``terminate()``, ``kill()``,
  ``wait(timeout)`` and call ``on_line(str)`` / ``on_finished(int)``.
* :class:`SFRJob` builds the ``sfr`` command line, feeds lines to :class:`JobProgress` and
  implements the cancel protocol: ask the engine (``sfr cancel PROJECT``, which stops at the
  next safe point with everything saved), then terminate after a grace period, then kill.

Nothing here imports Qt, so everything runs under plain Python and pytest.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

#: Where the engine package lives: next to this module's package in an installed extension
#: (both are copied into Slicer's qt-scripted-modules folder), or the repository root.
_HERE = Path(__file__).resolve().parent


def engine_search_path() -> str | None:
    """The folder holding ``SFRSegmenterLib`` (to put on the child's ``PYTHONPATH``)."""
    for candidate in (_HERE.parent, _HERE.parent.parent):
        if (candidate / "SFRSegmenterLib" / "__init__.py").exists():
            return str(candidate)
    return None


def python_executable() -> str:
    """Slicer's own Python (``PythonSlicer``) when running inside Slicer, else this Python."""
    exe_dir = Path(sys.executable).resolve().parent
    for folder in (exe_dir, exe_dir.parent / "bin"):
        for name in ("PythonSlicer", "PythonSlicer.exe"):
            candidate = folder / name
            if candidate.exists():
                return str(candidate)
    found = shutil.which("PythonSlicer")
    if found and "Slicer" in Path(sys.executable).name:
        return found
    return sys.executable


# --------------------------------------------------------------------------- events


def parse_event_line(line: "str | bytes") -> dict | None:
    """One engine output line -> its event dict, or None when it is not an event.

    Non-JSON lines (warnings a library prints, a traceback) are not events; the caller shows
    them as plain log text.  Unknown keys and unknown event kinds are kept as they are.
    """
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("event"), str):
        return None
    return record


def format_eta(seconds) -> str:
    """``3725`` -> ``"1:02:05"``, ``65`` -> ``"01:05"``; unknown -> ``"--"``."""
    if seconds is None:
        return "--"
    try:
        seconds = int(round(float(seconds)))
    except (TypeError, ValueError):
        return "--"
    if seconds < 0:
        return "--"
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


@dataclass
class JobProgress:
    """What the panel shows, updated line by line from the engine's output."""

    stage: str = ""
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    stages_done: list = field(default_factory=list)
    log: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    result: dict | None = None
    run_id: str | None = None

    @property
    def percent(self) -> int:
        if not self.total:
            return 0
        return int(max(0, min(100, round(100.0 * self.step / self.total))))

    def status_text(self) -> str:
        if not self.stage:
            return "Starting..."
        if self.total:
            return f"{self.stage}: {self.step}/{self.total}, ETA {format_eta(self.eta_s)}"
        return self.stage

    def feed(self, line: str) -> dict | None:
        """Take one output line; returns the event it held (or None for plain text)."""
        event = parse_event_line(line)
        if event is None:
            text = line.rstrip("\n")
            if text.strip():
                self.log.append(text)
            return None
        kind = event["event"]
        if kind == "progress":
            self.stage = str(event.get("stage", self.stage))
            self.step = _int(event.get("step"), self.step)
            self.total = _int(event.get("total"), self.total)
            self.eta_s = event.get("eta_s")
        elif kind == "stage":
            name = str(event.get("stage", ""))
            status = event.get("status", "")
            if status == "start":
                self.stage, self.step, self.total, self.eta_s = name, 0, 0, None
            elif status in ("done", "skipped") and name not in self.stages_done:
                self.stages_done.append(name)
            self.log.append(f"[{name}] {status}")
        elif kind == "log":
            level = event.get("level", "info")
            message = str(event.get("message", ""))
            self.log.append(message if level == "info" else f"{level}: {message}")
            if level == "error":
                self.errors.append(message)
        elif kind == "result":
            self.result = event
        for key in ("run_id", "run"):
            if isinstance(event.get(key), str):
                self.run_id = event[key]
                break
        return event


def _int(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


# --------------------------------------------------------------------------- runners


class SubprocessRunner:
    """Run one process with ``subprocess``; its output is read by a thread.

    ``poll()`` (call it from a timer; it never blocks) delivers the lines read so far to
    ``on_line`` and, once the process has ended and its output is drained, calls
    ``on_finished(returncode)`` exactly once.
    """

    def __init__(self):
        self.on_line: Callable[[str], None] | None = None
        self.on_finished: Callable[[int], None] | None = None
        self._proc: subprocess.Popen | None = None
        self._lines: "queue.Queue[str | None]" = queue.Queue()
        self._reader: threading.Thread | None = None
        self._eof = False
        self._finished = False
        self.returncode: int | None = None

    def start(self, args, env=None, cwd=None) -> None:
        if self.is_running():
            raise RuntimeError("a process is already running")
        kwargs = {}
        if os.name == "nt":  # no console window on Windows
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:  # own process group, so Ctrl-C in Slicer's terminal does not hit the job
            kwargs["start_new_session"] = True
        self._proc = subprocess.Popen(
            [str(a) for a in args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **kwargs,
        )
        self._eof = self._finished = False
        self.returncode = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def poll(self) -> None:
        while True:
            try:
                item = self._lines.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._eof = True
            elif self.on_line:
                self.on_line(item)
        if self._proc is not None and self._eof and not self._finished:
            rc = self._proc.poll()
            if rc is not None:
                self._finished = True
                self.returncode = rc
                if self.on_finished:
                    self.on_finished(rc)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def terminate(self) -> None:
        if self.is_running():
            self._proc.terminate()

    def kill(self) -> None:
        if self.is_running():
            self._proc.kill()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the process to end (delivering its output); True if ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            if self._finished:
                return True
            time.sleep(0.02)
        self.poll()
        return self._finished


# --------------------------------------------------------------------------- the job


@dataclass
class RunSettings:
    """The Settings section of the panel, as ``sfr run`` options."""

    backbone: str = "lite_medsam"
    checkpoint: str = ""
    ssl: str = "mean_teacher"
    sfr_plus: bool = True
    device: str = "auto"
    resume: bool = False
    extra: list = field(default_factory=list)

    def run_options(self) -> list:
        opts = ["--backbone", self.backbone, "--ssl", self.ssl, "--device", self.device]
        if self.checkpoint:
            opts += ["--checkpoint", str(self.checkpoint)]
        if self.sfr_plus:
            opts.append("--sfr-plus")
        if self.resume:
            opts.append("--resume")
        return opts + [str(a) for a in self.extra]


BACKBONES = [
    ("lite_medsam", "LiteMedSAM (default, CPU friendly)"),
    ("vit_b", "SAM ViT-B (checkpoint file)"),
    ("vit_l", "SAM ViT-L (checkpoint file)"),
    ("vit_h", "SAM ViT-H (checkpoint file)"),
    ("medsam_vit_b", "MedSAM ViT-B (checkpoint file)"),
]
SSL_METHODS = [
    ("mean_teacher", "Mean Teacher"),
    ("ua_mt", "Uncertainty-aware Mean Teacher"),
    ("self_training", "Self-training"),
    ("supervised", "Supervised only"),
]


def sfr_command(*args, python: str | None = None) -> list:
    """``[python, -m, SFRSegmenterLib, *args]``."""
    return [python or python_executable(), "-m", "SFRSegmenterLib", *[str(a) for a in args]]


def child_environment(base: dict | None = None) -> dict:
    """Environment for the engine process: the engine importable, output unbuffered."""
    env = dict(os.environ if base is None else base)
    engine = engine_search_path()
    if engine:
        env["PYTHONPATH"] = engine + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


class SFRJob:
    """One background ``sfr`` job on a project, with progress and a clean cancel.

    ``runner`` is any object with the runner interface (see module docstring); ``args``
    defaults to ``sfr --progress json run PROJECT <settings>``.  Callbacks: ``on_progress(job)``
    after every event, ``on_log(text)`` for every log line, ``on_finished(job)`` at the end.
    ``state`` goes ``idle -> running -> (cancelling ->) finished | failed | cancelled``.
    """

    def __init__(
        self,
        project: "str | os.PathLike",
        settings: RunSettings | None = None,
        runner=None,
        args: list | None = None,
        python: str | None = None,
        cancel_grace_s: float = 30.0,
        kill_grace_s: float = 5.0,
    ):
        self.project = Path(project)
        self.settings = settings or RunSettings()
        self.runner = runner or SubprocessRunner()
        self.python = python
        self.args = args or sfr_command(
            "--progress", "json", "run", str(self.project), *self.settings.run_options(), python=python
        )
        self.progress = JobProgress()
        self.state = "idle"
        self.returncode: int | None = None
        self.cancel_grace_s = cancel_grace_s
        self.kill_grace_s = kill_grace_s
        self._cancel_at: float | None = None
        self._terminated_at: float | None = None
        self._cancel_proc: subprocess.Popen | None = None
        self.on_progress: Callable[["SFRJob"], None] | None = None
        self.on_log: Callable[[str], None] | None = None
        self.on_finished: Callable[["SFRJob"], None] | None = None

    # ---------------------------------------------------------------- lifecycle
    def start(self, env: dict | None = None) -> None:
        self.runner.on_line = self._line
        self.runner.on_finished = self._finished
        self.state = "running"
        cwd = str(self.project) if self.project.is_dir() else None
        self.runner.start(self.args, env=child_environment(env), cwd=cwd)

    def is_active(self) -> bool:
        return self.state in ("running", "cancelling")

    def poll(self) -> None:
        """Deliver output and enforce the cancel deadlines; call from a timer (never blocks)."""
        self.runner.poll()
        if self.state != "cancelling":
            return
        now = time.monotonic()
        if self._terminated_at is None and self._cancel_at is not None and now - self._cancel_at > self.cancel_grace_s:
            self._say("the job did not stop at a safe point in time; terminating it")
            self.runner.terminate()
            self._terminated_at = now
        elif self._terminated_at is not None and now - self._terminated_at > self.kill_grace_s:
            self.runner.kill()

    def cancel(self) -> None:
        """Ask the engine to stop at its next safe point (non-blocking)."""
        if not self.is_active() or self.state == "cancelling":
            return
        self.state = "cancelling"
        self._cancel_at = time.monotonic()
        self._say("cancelling: asking the engine to stop at the next safe point")
        try:
            self._cancel_proc = subprocess.Popen(
                sfr_command("cancel", str(self.project), python=self.python),
                env=child_environment(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:  # cannot even start Python: fall back to terminating
            self._say(f"could not run 'sfr cancel' ({exc}); terminating the job")
            self.runner.terminate()
            self._terminated_at = time.monotonic()

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop the job now (closing the scene or Slicer): cancel, wait, terminate, kill."""
        if not self.is_active():
            return
        self.cancel()
        if self.runner.wait(min(timeout_s, self.cancel_grace_s)):
            return
        self.runner.terminate()
        self._terminated_at = time.monotonic()
        if self.runner.wait(self.kill_grace_s):
            return
        self.runner.kill()
        self.runner.wait(self.kill_grace_s)

    # ---------------------------------------------------------------- callbacks
    def _say(self, text: str) -> None:
        self.progress.log.append(text)
        if self.on_log:
            self.on_log(text)

    def _line(self, line: str) -> None:
        before = len(self.progress.log)
        event = self.progress.feed(line)
        for text in self.progress.log[before:]:
            if self.on_log:
                self.on_log(text)
        if event is not None and self.on_progress:
            self.on_progress(self)

    def _finished(self, returncode: int) -> None:
        self.returncode = returncode
        if self.state == "cancelling":
            self.state = "cancelled"
        else:
            self.state = "finished" if returncode == 0 else "failed"
        if self._cancel_proc is not None and self._cancel_proc.poll() is None:
            self._cancel_proc.terminate()
        if self.on_finished:
            self.on_finished(self)
