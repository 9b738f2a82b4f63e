"""Starting the engine's short processes from the Slicer module: which Python, which
environment, and a plain-Python runner.

A *runner* starts one process and reports its output lines and its end: ``start(args, env,
cwd)``, ``poll()``, ``is_running()``, ``terminate()``, ``kill()``, ``wait(timeout)``, calling
``on_line(str)`` / ``on_finished(int)``.  :class:`SubprocessRunner` is the one the panel uses
for every child process (its reader thread collects the output; the panel's timer calls
``poll()``, so Slicer's window never waits on a process) and the one the tests use.

Nothing here imports Qt, so it runs under plain Python and pytest.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
import time
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


def logic_environment(base: dict | None = None) -> dict:
    """:func:`child_environment` with this package importable too (``python -m
    SFRSegmenterLogicLib.x`` children: the GPU facts, the checkpoint download, the install check)."""
    env = child_environment(base)
    env["PYTHONPATH"] = str(_HERE.parent) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# --------------------------------------------------------------------------- runner


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
