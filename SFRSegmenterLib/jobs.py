"""Job control for ``sfr run`` (engine side): the project lock, status, cancellation, detaching.

The run folder's names and the ``runs/latest`` pointer are :mod:`.runfolder`'s (re-exported
here).  The Slicer-side control (what pressing Run does, ending a run) is :mod:`.runcontrol`.
Files this module writes (JSON written atomically; see ``docs/run.md``)::

    PROJECT/runs/.lock               {"pid", "host", "started", "proc_start", "run_id"} while a run writes
    PROJECT/runs/<id>/status.json    {"state", "stage", "step", "total", "eta_s", ...}
    PROJECT/runs/<id>/cancel-request present once ``sfr cancel`` asked the run to stop

A run holds the lock for as long as it writes into the project.  A lock whose process is gone
(killed, crashed, machine rebooted: same host, PID absent or reused by another process) is
stale: the next run says so and clears it.  A lock from another host is never cleared
automatically.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import events
from .errors import SFRError
from .clock import utcnow  # noqa: F401 (jobs.utcnow: the run files' timestamps)
from .io import read_json, write_json_atomic
from .runfolder import (  # noqa: F401 - the run folder's names and pointer, re-exported for job control
    RUN_ID_PATTERN,
    RunFolder,
    check_run_id,
    contained,
    is_run_id,
    latest_run_id,
    new_run_id,
    run_dir,
    runs_dir,
    set_latest,
)

LOCK_NAME = ".lock"
CANCEL_NAME = RunFolder.CANCEL
STATUS_NAME = RunFolder.STATUS
STATES = ("starting", "running", "done", "cancelled", "failed")
#: Exit status of ``sfr run`` when it stopped because cancellation was requested.
EXIT_CANCELLED = 3
#: An unreadable lock younger than this may be a run starting; older, it is stale.
STARTING_LOCK_S = 10


# --------------------------------------------------------------------------- processes


def _proc_start(pid: int) -> str | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux), to detect PID reuse."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode("ascii", "replace")
        # field 22 (starttime) counts after the ")" that closes the command name
        rest = data[data.rindex(")") + 2 :].split()
        return rest[19]
    except (OSError, ValueError, IndexError):
        return None


#: The largest process id any system gives (a C int); a larger "pid" in a record is malformed.
PID_MAX = 2 ** 31 - 1


def valid_pid(value) -> "int | None":
    """``value`` when it can be a process id (an integer 1..PID_MAX), else None (a hand-edited or
    damaged record: a string, a list, a number os.kill cannot take)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= PID_MAX:
        return None
    return value


def pid_alive(pid: "int | None", proc_start: str | None = None) -> bool:
    """True when ``pid`` runs (and, if ``proc_start`` is given and knowable, is the same process);
    False for anything that cannot be a process id."""
    if valid_pid(pid) is None:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        import psutil

        return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    # a zombie (killed, not yet reaped by its parent) is not running
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode("ascii", "replace")
        if data[data.rindex(")") + 2 :].split()[0] in ("Z", "X"):
            return False
    except (OSError, ValueError):
        pass
    if proc_start is not None:
        now = _proc_start(pid)
        if now is not None and now != proc_start:
            return False  # the PID was reused by another process
    return True


# --------------------------------------------------------------------------- lock


class ProjectLock:
    """Exclusive right to write runs into one project (``PROJECT/runs/.lock``)."""

    def __init__(self, project_root, run_id: str):
        self.path = runs_dir(project_root) / LOCK_NAME
        self.run_id = run_id
        self.held = False

    @staticmethod
    def read(path: Path) -> dict | None:
        """The lock's record; None when there is no lock, ``{}`` when it is unreadable or malformed
        (not a JSON object, a pid that is not a process id, a host that is not a name): such a lock
        is judged like a half-written one (stale once old, see :meth:`_judge`)."""
        info = read_json(path, "project lock", missing=None, damaged={})
        if info is None:
            return None
        if not isinstance(info, dict):
            return {}
        if valid_pid(info.get("pid")) is None or not isinstance(info.get("host"), str):
            return {}
        return info

    @staticmethod
    def holder_alive(info: dict) -> bool | None:
        """True/False for a lock of this host; None when it belongs to another host."""
        if info.get("host") != socket.gethostname():
            return None
        return pid_alive(info.get("pid"), info.get("proc_start"))

    def check_free(self) -> None:
        """Raise SFRError if a live run holds the lock (clears a stale one)."""
        info = self.read(self.path)
        if info is None:
            return
        self._judge(info)

    def _judge(self, info: dict) -> None:
        if not info:  # empty/partial/malformed lock file: a writer died while creating it, or a hand edit
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return
            if age < STARTING_LOCK_S:
                raise SFRError("the project lock is unreadable or malformed (a run may be starting); try again "
                               f"in {STARTING_LOCK_S} s, after that it is cleared as stale", self.path)
            events.log(f"cleared an unreadable or malformed stale lock {self.path}", "warning")
            self.path.unlink(missing_ok=True)
            return
        alive = self.holder_alive(info)
        who = f"run {info.get('run_id')} (process {info.get('pid')} on {info.get('host')} since {info.get('started')})"
        if alive is None:
            raise SFRError(
                f"project is locked by {who} on another machine; if that run is gone, delete this file",
                self.path,
            )
        if alive:
            if info.get("pid") == os.getpid():
                return
            raise SFRError(
                f"project is busy: {who} is writing it; wait for it, watch it with 'sfr status', "
                "or stop it with 'sfr cancel'",
                self.path,
            )
        events.log(
            f"cleared a stale lock left by {who}: that process is gone (resume its run with "
            "'sfr run --resume')",
            "warning",
        )
        self.path.unlink(missing_ok=True)

    def acquire(self) -> "ProjectLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SFRError(f"cannot create the runs folder ({exc.strerror or exc}; read-only or no "
                           "permission?)", self.path.parent) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": utcnow(),
            "proc_start": _proc_start(os.getpid()),
            "run_id": self.run_id,
        }
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = self.read(self.path) or {}
                if held.get("run_id") == self.run_id and held.get("pid") in (os.getpid(), os.getppid()):
                    # this process, or the ``sfr run`` that created this run and detached us, holds
                    # it: the lock is handed over (only a lock holder creates or resumes a run)
                    write_json_atomic(self.path, info)
                    self.held = True
                    return self
                self._judge(held)
                continue
            except OSError as exc:
                raise SFRError(f"cannot write into the project ({exc.strerror or exc}; read-only or no "
                               "permission?)", self.path.parent) from None
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(info, fh)
                fh.flush()
                os.fsync(fh.fileno())
            self.held = True
            return self
        raise SFRError("could not take the project lock (another run keeps starting)", self.path)

    def release(self) -> None:
        if not self.held:
            return
        info = self.read(self.path)
        if info and info.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


# --------------------------------------------------------------------------- status


class StatusWriter:
    """An events sink that keeps ``status.json`` of a run up to date (at most every second)."""

    def __init__(self, run_path: Path, base: dict):
        self.path = Path(run_path) / STATUS_NAME
        self.status = dict(base)
        self._last = 0.0

    def set(self, force: bool = True, **fields) -> None:
        self.status.update(fields)
        self.status["updated"] = utcnow()
        now = time.monotonic()
        if force or now - self._last >= 1.0:
            self._last = now
            try:
                write_json_atomic(self.path, self.status)
            except OSError:
                self._write_in_place()  # a full disk must not hide the real error

    def _write_in_place(self) -> None:
        """Overwrite status.json in its own blocks (a full disk has no room for a new file), so a
        run stopped by a full disk reads ``failed``, not ``crashed``."""
        try:
            text = json.dumps(self.status)
            with open(self.path, "r+", encoding="utf-8") as fh:
                fh.write(text)
                fh.truncate()
        except OSError:
            pass

    def __call__(self, record: dict) -> None:
        kind = record.get("event")
        if kind == "progress":
            self.set(
                force=record.get("step") == record.get("total"),
                step=record.get("step"),
                total=record.get("total"),
                eta_s=record.get("eta_s"),
                substage=record.get("stage"),
                **{k: record[k] for k in ("overall", "overall_eta_s") if k in record},
                **({"loss": record["loss"]} if "loss" in record else {}),
            )
        elif kind == "estimate":
            self.set(estimate_s=record.get("seconds"), budget=record.get("budget"))
        elif kind == "stage" and record.get("status") == "start" and record.get("pipeline"):
            self.set(stage=record.get("stage"), stage_index=record.get("index"),
                     stages_total=record.get("of"), step=None, total=None, eta_s=None)
        elif kind == "log" and record.get("level") in ("warning", "error"):
            self.set(message=record.get("message"))


def read_status(run_path: Path) -> dict:
    """``status.json`` of a run, with ``state`` corrected to ``crashed`` when its process is gone."""
    path = Path(run_path) / STATUS_NAME
    status = read_json(path, "run status file", missing=None)
    if status is None:
        status = {"state": "unknown", "run_id": Path(run_path).name}
    if not isinstance(status, dict):
        raise SFRError("the run status file is not a JSON object (damaged or edited by hand)", path)
    if status.get("state") == "starting" and not status.get("pid"):
        launcher = read_json(RunFolder(run_path).launcher, "launcher record", missing=None, damaged=None)
        if launcher:
            status.update({k: launcher.get(k) for k in ("pid", "host", "proc_start")})
    if status.get("state") in ("starting", "running"):
        host_ok = status.get("host") in (None, socket.gethostname())
        pid = status.get("pid")
        if host_ok and pid and not pid_alive(pid, status.get("proc_start")):  # a malformed pid runs nothing
            # every way out of a run writes a final state: a missing process means it was
            # killed (kill -9, power loss) or crashed hard
            status["state"] = "crashed"
            status["message"] = (
                f"process {pid} is gone without finishing (killed or crashed); "
                "continue it with 'sfr run PROJECT --resume'"
            )
    if (Path(run_path) / CANCEL_NAME).exists() and status.get("state") in ("starting", "running"):
        status["cancel_requested"] = True
    return status


def request_cancel(run_path: Path) -> Path:
    p = Path(run_path) / CANCEL_NAME
    p.write_text(utcnow() + "\n", encoding="utf-8")
    return p


def stop_checker(run_path: Path):
    """``should_stop()`` for the stages: True once a cancel request exists."""
    flag = Path(run_path) / CANCEL_NAME

    def should_stop() -> bool:
        return flag.exists()

    return should_stop


# --------------------------------------------------------------------------- detaching


def spawn_detached(argv: list, log_path: Path) -> subprocess.Popen:
    """Start ``python -m SFRSegmenterLib ARGV`` in its own session, output appended to ``log_path``.

    The child survives the parent (and the terminal) exiting; it is not a thread.
    """
    pkg_parent = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        kwargs = {}
        if os.name == "nt":  # pragma: no cover
            kwargs["creationflags"] = 0x00000008 | 0x00000200  # DETACHED_PROCESS | NEW_PROCESS_GROUP
        else:
            kwargs["start_new_session"] = True
        return subprocess.Popen(
            [sys.executable, "-m", "SFRSegmenterLib", *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            close_fds=True,
            **kwargs,
        )
