"""The run contract: the ``sfr`` command lines that start, continue and stop a run, and the stop.

Programs that drive the engine (the Slicer module) import this module and never spell ``sfr``
flags themselves.  Three command lines, all for ``python -m SFRSegmenterLib``:

* :func:`start_command`: ``--progress json run PROJECT <settings> --detach``
* :func:`continue_command`: ``--progress json run PROJECT --resume [--device D] --detach``
  (``--resume`` takes the saved configuration; only the device may change)
* :func:`stop_command`: ``cancel PROJECT --wait --timeout T --kill``
* :func:`predict_command`: ``predict --model RUN/vnet --images IMAGE --out OUT --device D --json``
  (a finished run's network applied to one more volume: the Slicer module's *Apply model*)

:func:`next_action` says which of start and continue fits a project and a settings object;
:func:`request_stop` asks a run to stop at its next safe point and :func:`kill_run` ends it
from the calling process, reaching the engine process the run records in its ``status.json``
and every process below it (never only a launcher such as Slicer's ``PythonSlicer``, which
forwards no signals).  :func:`finished_runs` lists the runs whose results can be loaded.

Imports neither torch nor Qt: the Slicer module imports it in Slicer's own process.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import jobs
from .errors import SFRError
from .runfolder import RunFolder
from .io import read_json
from .retrain.names import SSL_NAMES
from .sam import BACKBONE_NAMES

#: Backbones a user can choose (``tiny_test`` is the engine's test model, meaningless output).
USER_BACKBONES = tuple(name for name in BACKBONE_NAMES if name != "tiny_test")
#: Semi-supervised methods of stage R.
SSL_METHODS = SSL_NAMES
#: States of a run that ``sfr run --resume`` continues.
CONTINUABLE = ("cancelled", "failed", "crashed")
#: States of a run whose engine still writes the project.
ACTIVE = ("starting", "running")
#: Keys of ``config.json`` that do not describe what a run computes.
_NOT_CONFIG = ("run_id", "project", "device", "processes", "config_version", "resolved_rounds",
               "budget_choice")  # what the budget resolved to on the machine, not what was asked


@dataclass
class RunSettings:
    """What a user chooses for a run; :meth:`run_options` is its ``sfr run`` options."""

    budget: str = "auto"  # run/budget.py BUDGETS
    backbone: str = "lite_medsam"
    checkpoint: str = ""
    ssl: str = "mean_teacher"
    sfr_plus: bool = True
    device: str = "auto"
    iterations_sam: int | None = None
    iterations_vnet: int | None = None
    sam_options: dict = field(default_factory=dict)
    vnet_options: dict = field(default_factory=dict)
    report: bool = True
    #: warm start (Retrain after corrections): a finished run's id, or "latest"; None: from scratch
    warm_start: str | None = None

    def run_options(self) -> list:
        opts = ["--budget", self.budget or "auto", "--backbone", self.backbone, "--ssl", self.ssl,
                "--device", self.device or "auto"]
        if self.checkpoint:
            opts += ["--checkpoint", str(self.checkpoint)]
        if self.sfr_plus:
            opts.append("--sfr-plus")
        if self.iterations_sam is not None:
            opts += ["--iterations-sam", str(int(self.iterations_sam))]
        if self.iterations_vnet is not None:
            opts += ["--iterations-vnet", str(int(self.iterations_vnet))]
        for flag, options in (("--sam-option", self.sam_options), ("--vnet-option", self.vnet_options)):
            for key, value in options.items():
                opts += [flag, f"{key}={json.dumps(value)}"]
        if not self.report:
            opts.append("--no-report")
        if self.warm_start:
            opts += ["--warm-start", str(self.warm_start)]
        return opts


def _base(project, progress: str) -> list:
    return ["--progress", progress, "run", str(project)]


def start_command(project, settings: RunSettings, detach: bool = True, progress: str = "json") -> list:
    """``sfr`` arguments that start a new run of ``project`` with ``settings``."""
    return _base(project, progress) + settings.run_options() + (["--detach"] if detach else [])


def continue_command(project, device: str | None = None, detach: bool = True, progress: str = "json") -> list:
    """``sfr`` arguments that continue the project's latest run with its saved configuration."""
    args = _base(project, progress) + ["--resume"]
    if device:
        args += ["--device", device]
    return args + (["--detach"] if detach else [])


def stop_command(project, timeout_s: float = 60.0) -> list:
    """``sfr`` arguments that stop the running run: cancel, wait, then end its processes."""
    return ["cancel", str(project), "--wait", "--timeout", f"{float(timeout_s):g}", "--kill"]


def predict_command(model, images, out, device: str | None = None) -> list:
    """``sfr`` arguments that segment ``images`` (files) with a finished run's network ``model``
    (``RUN/vnet``) into ``out``; the per-case results are printed as JSON."""
    images = [images] if isinstance(images, (str, Path)) else list(images)
    args = ["predict", "--model", str(model), "--images", *map(str, images), "--out", str(out)]
    if device:
        args += ["--device", device]
    return args + ["--json"]


def config_of(settings: RunSettings) -> dict:
    """The run configuration ``settings`` give, as the engine's own parser reads them."""
    from .cli import build_parser
    from .commands.run import config_from_args

    args = build_parser().parse_args(start_command("PROJECT", settings, detach=False))
    return _comparable(config_from_args(args).to_dict())


def _comparable(config: dict) -> dict:
    out = {k: v for k, v in config.items() if k not in _NOT_CONFIG}
    if out.get("crop") is not None:
        out["crop"] = list(out["crop"])
    return out


def run_config(run_path) -> dict:
    """The saved configuration of a run (``config.json``), as :func:`config_of` gives it."""
    path = RunFolder(run_path).config
    return _comparable(read_json(path, "run configuration"))


def latest_status(project_root) -> dict | None:
    """``status.json`` of the project's latest run (``crashed`` when its process is gone), or None."""
    run_id = jobs.latest_run_id(project_root)  # SFRError when runs/latest is not a run id
    if run_id is None or not (jobs.runs_dir(project_root) / run_id).is_dir():
        return None
    status = jobs.read_status(jobs.run_dir(project_root, run_id))
    status.setdefault("run_id", run_id)
    return status


def next_action(project_root, settings: RunSettings) -> tuple:
    """What pressing Run should do: ``("start", None)``, ``("continue", run_id)`` or ``("busy", run_id)``.

    Continue when the latest run stopped before its end (cancelled, failed, crashed) and was
    made with the same configuration; a changed setting starts a new run (finished stages whose
    inputs did not change are reused by the engine anyway).
    """
    status = latest_status(project_root)
    if status is None:
        return ("start", None)
    run_id = status.get("run_id")
    state = status.get("state")
    if state in ACTIVE:
        return ("busy", run_id)
    if state in CONTINUABLE:
        try:
            same = run_config(jobs.runs_dir(project_root) / run_id) == config_of(settings)
        except SFRError:
            same = False
        if same:
            return ("continue", run_id)
    return ("start", None)


def finished_runs(project_root) -> list:
    """Status of every finished (``done``) run of the project, newest first."""
    folder = jobs.runs_dir(project_root)
    runs = []
    for path in folder.iterdir() if folder.is_dir() else ():
        if not path.is_dir() or not RunFolder(path).status.exists():
            continue
        try:
            status = jobs.read_status(path)
        except SFRError:
            continue
        if status.get("state") == "done":
            status.setdefault("run_id", path.name)
            runs.append(status)
    runs.sort(key=lambda st: (str(st.get("finished") or ""), st["run_id"]), reverse=True)
    return runs


# --------------------------------------------------------------------------- stopping


def engine_pids(run_path) -> list:
    """PIDs of the processes that run ``run_path`` on this host and are still alive.

    The engine records its own PID in ``status.json`` (and the ``--detach`` launcher the
    child's in ``launcher.json``); a PID reused by another process is not returned.
    """
    import socket

    run_path = Path(run_path)
    records = []
    for name in (RunFolder.STATUS, RunFolder.LAUNCHER):
        try:
            record = read_json(run_path / name, name, missing=None, damaged=None)
        except SFRError:  # unreadable: this record names no process
            record = None
        if isinstance(record, dict):
            records.append(record)
    pids = []
    for rec in records:
        pid = rec.get("pid")
        if not isinstance(pid, int) or pid in pids or rec.get("host") not in (None, socket.gethostname()):
            continue
        if jobs.pid_alive(pid, rec.get("proc_start")) and _is_engine(pid, rec.get("proc_start") is not None):
            pids.append(pid)
    return pids


def _is_engine(pid: int, same_start: bool = False) -> bool:
    """The process runs this engine (guards against a PID reused where start times are unknown).

    ``same_start``: its start time matched the record's; then a process whose command line is
    already gone (it is exiting: its memory is released before it ends) still counts."""
    import psutil

    try:
        cmdline = psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True
    if not cmdline and same_start:
        return True
    return any("SFRSegmenterLib" in part or Path(part).name in ("sfr", "sfr.exe") for part in cmdline)


def kill_tree(pid: int, timeout_s: float = 10.0) -> list:
    """End ``pid`` and every process below it at once (SIGKILL; TerminateProcess on Windows).

    Returns the PIDs that were ended.  Children are collected before the parent dies, so
    grandchildren re-parented to init are reached too.
    """
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    deadline = time.monotonic() + timeout_s
    alive = [p for p in procs if _running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _running(p)]
    if alive:
        raise SFRError("could not end process(es) " + ", ".join(str(p.pid) for p in alive) + " of the run")
    return [p.pid for p in procs]


def _running(proc) -> bool:
    import psutil

    try:  # is_running() also says False for a PID reused by a new process
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE  # a zombie has ended
    except psutil.NoSuchProcess:
        return False


def kill_run(run_path) -> list:
    """End the engine processes of ``run_path`` now; the run then reads as ``crashed``
    and ``sfr run PROJECT --resume`` continues it from its last checkpoint."""
    ended = []
    for pid in engine_pids(run_path):
        ended += kill_tree(pid)
    # a killed engine leaves its lock behind; the next run clears a dead holder's lock itself
    return ended


def request_stop(project_root, run_id: str | None = None) -> Path:
    """Ask the run to stop at its next safe point (what ``sfr cancel`` does); returns its folder."""
    path = jobs.run_dir(project_root, run_id)
    status = jobs.read_status(path)
    if status.get("state") in ACTIVE:
        jobs.request_cancel(path)
    return path
