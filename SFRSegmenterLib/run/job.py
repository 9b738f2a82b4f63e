"""One run in one process: the run folder, the project lock, status, signals, logs, and how a
failure is classified (GPU out of memory: retried with a smaller batch; disk full: one line
naming the file; cancel: exit status 3).  Folder and lock primitives are :mod:`..jobs`'."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import time
from pathlib import Path

from .. import events, jobs
from ..errors import Cancelled, SFRError
from ..io import write_json_atomic
from ..manifest import Project, load_project
from ..runfolder import RunFolder
from .config import RunConfig, load_run_config
from .oom import is_oom, with_oom_retry  # noqa: F401 - job.with_oom_retry as before

# --------------------------------------------------------------------------- failures


DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)
#: How libraries that do not raise OSError (torch.save, ITK writers) word a failed write.
DISK_FULL_TEXT = ("no space left", "disk quota", "file too large", "file write failed", "could not write",
                  "unable to write", "errno 28", "errno 27",
                  # torch.save's C++ writer when a write fails part-way
                  "iostream error", "pytorchstreamwriter failed", "unexpected pos")


def is_disk_full(exc: BaseException, folder: "Path | None" = None) -> bool:
    """A write that failed because the disk (or a quota or file-size limit) is full.

    Also true for any error while ``folder``'s file system has less than 20 MB free.
    """
    if folder is not None:
        try:
            if shutil.disk_usage(folder).free < 20 * 2**20:
                return True
        except OSError:
            pass
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return True
        text = str(exc).lower()
        if any(t in text for t in DISK_FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def disk_full_message(exc: BaseException) -> str:
    from .. import io as sfr_io

    where = getattr(exc, "filename", None) or sfr_io.LAST_OUTPUT or "a file"
    return (f"disk full while writing {where}: the run stopped; files already written are complete (all "
            "writes are atomic); free some space and continue with 'sfr run PROJECT --resume'")


# --------------------------------------------------------------------------- the run folder


def create_run(project: Project, cfg: RunConfig, run_id: str | None = None) -> Path:
    """Make ``runs/<id>/`` with its resolved config and a ``starting`` status; set ``latest``."""
    run_id = run_id or jobs.new_run_id()
    path = jobs.runs_dir(project.root) / run_id
    path.mkdir(parents=True, exist_ok=False)
    # the project's absolute path: `sfr report` from any folder finds it, and refuses another one
    write_json_atomic(RunFolder(path).config, {"run_id": run_id, "project": str(Path(project.root).resolve()),
                                           **cfg.to_dict()})
    write_json_atomic(RunFolder(path).status, {"state": "starting", "run_id": run_id, "created": jobs.utcnow()})
    jobs.set_latest(project.root, run_id)
    return path


class _LogFile:
    """An events sink writing ``log.txt``: log lines and the pipeline's stage lines."""

    def __init__(self, path: Path):
        self.fh = open(path, "a", encoding="utf-8", buffering=1)

    def __call__(self, rec: dict) -> None:
        if rec.get("event") == "log":
            self.fh.write(f"{rec['time']} {rec.get('level', 'info')}: {rec.get('message')}\n")
        elif rec.get("event") == "stage" and rec.get("pipeline"):
            extra = f" ({rec['reason']})" if rec.get("reason") else ""
            self.fh.write(f"{rec['time']} stage {rec['stage']} {rec['status']}{extra}\n")

    def close(self) -> None:
        self.fh.close()


def _on_sigterm(run_path: Path):
    """``kill PID`` = cancel at the next safe point; returns the previous handler (None off the main thread)."""
    try:
        return signal.signal(signal.SIGTERM, lambda signum, frame: jobs.request_cancel(run_path))
    except ValueError:  # not the main thread
        return None


# --------------------------------------------------------------------------- executing


def execute(project_root, run_path: Path) -> int:
    """Run (or continue) the run in ``run_path`` in this process; returns the exit status."""
    run_path = Path(run_path)
    project = load_project(project_root)
    from .budget import effective, summary

    saved = load_run_config(run_path)
    cfg = effective(saved)  # the budget's settings under the options the user gave
    run_id = run_path.name
    lock = jobs.ProjectLock(project.root, run_id)
    lock.acquire()
    sinks = []
    status = jobs.StatusWriter(run_path, jobs.read_status(run_path))
    previous_term = None
    try:
        folder = RunFolder(run_path)
        sinks.append(events.open_sink(folder.events))
        sinks += [_LogFile(folder.log), status]
        for sink in sinks[1:]:
            events.add_sink(sink)
        status.set(state="running", run_id=run_id, pid=os.getpid(), host=socket.gethostname(),
                   proc_start=jobs._proc_start(os.getpid()), started=status.status.get("started") or jobs.utcnow(),
                   resumed=jobs.utcnow() if status.status.get("started") else None,
                   message=None, error=None, finished=None)
        previous_term = _on_sigterm(run_path)
        events.log(f"run {run_id} on project {project.root} ({'SFR+' if cfg.sfr_plus else 'SFR'}, "
                   f"{cfg.resolved_rounds} SFR+ round(s))")
        events.log(summary(saved.budget_choice))
        t0 = time.monotonic()
        code = _run_pipeline(project, run_path, cfg, status)
        if code:
            return code
        status.set(state="done", finished=jobs.utcnow(), seconds=round(time.monotonic() - t0, 1), stage="done",
                   step=None, total=None, eta_s=None)
        _publish(run_path, cfg, status)
        return 0
    finally:
        from .progress import stop

        stop()  # the whole run's progress tracker, if the pipeline started one
        if previous_term is not None:
            try:
                signal.signal(signal.SIGTERM, previous_term)
            except ValueError:
                pass
        for s in sinks:
            events.remove_sink(s)
            if hasattr(s, "close"):
                try:
                    s.close()
                except OSError:
                    pass
        lock.release()


def _run_pipeline(project: Project, run_path: Path, cfg: RunConfig, status) -> int:
    """The stages; a failure is written into ``status.json`` as what it is."""
    from .pipeline import Pipeline

    run_id = run_path.name
    try:
        Pipeline(project, run_path, cfg).run()
    except Cancelled:
        status.set(state="cancelled", finished=jobs.utcnow(),
                   message="cancelled; everything finished is saved; continue with 'sfr run PROJECT --resume'")
        events.log(f"run {run_id} cancelled at a safe point; continue with 'sfr run {project.root} --resume'",
                   "warning")
        return jobs.EXIT_CANCELLED
    except SFRError as exc:
        status.set(state="failed", finished=jobs.utcnow(), error=str(exc))
        raise
    except BaseException as exc:
        if isinstance(exc, Exception) and is_disk_full(exc, run_path):
            msg = disk_full_message(exc)
            status.set(state="failed", finished=jobs.utcnow(), error=msg)
            raise SFRError(msg, run_path) from None
        status.set(state="failed", finished=jobs.utcnow(), error=f"{type(exc).__name__}: {exc}")
        raise
    return 0


def _publish(run_path: Path, cfg: RunConfig, status) -> None:
    """The report (when asked for) and the result event of a finished run."""
    run_id = run_path.name
    report_path = None
    if cfg.report:
        try:
            from ..report import write_report

            report_path = write_report(run_path)
            status.set(report=str(report_path))
        except Exception as exc:  # noqa: BLE001 - the results are complete without the report
            events.log(f"could not write the report: {type(exc).__name__}: {exc}", "warning")
    events.log(f"run {run_id} finished: {run_path}")
    events.emit("result", run_id=run_id, run=str(run_path), review=str(RunFolder(run_path).review),
                report=str(report_path) if report_path else None)
