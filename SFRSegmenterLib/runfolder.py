"""The run folder: every file name of ``PROJECT/runs/<id>/`` and the pointer to the latest run.

This is the one place that spells the run folder's names; the engine (``run/``, :mod:`.jobs`,
the commands), the report and the Slicer module get paths and records through
:class:`RunFolder`.  Standard library only at import time, so the Slicer module can import it
before the engine's dependencies are installed.  The *contents* of each record are written by
their owners (status: :mod:`.jobs`; stages: :mod:`.run.cache`; review entries: :mod:`.review`).

    PROJECT/runs/latest                   text file: the id of the newest run (a name, never a path)
    RUN/config.json                       resolved configuration (+ run_id, project)
    RUN/status.json  RUN/launcher.json    state of the run, the detached process that started it
    RUN/cancel-request                    present once ``sfr cancel`` asked the run to stop
    RUN/events.jsonl  RUN/log.txt         every progress event, the human log
    RUN/calibration.json                  the estimate's step times, reused by a resume and later runs here
    RUN/stages.json  RUN/stages/<stage>/  stage records and folders (``<kind>-r<round>`` per round)
    RUN/rounds.json  RUN/metrics.json  RUN/slices.json
    RUN/review.json                       {"cases": [{"case", "confidence", "trusted", "flagged_slices", ...}]}
    RUN/pseudo/<case>.nii.gz              the pseudo-label
    RUN/pseudo/<case>_confidence.nii.gz   voxel confidence (max softmax)
    RUN/pseudo/<case>_lowconf.nii.gz      low-confidence mask
    RUN/vnet/model.pt                     the final V-Net;  RUN/validation/<case>.nii.gz  its labels
    RUN/embeddings/<case>-<key>.pt        a frozen SAM encoder's window embeddings (:mod:`.encoder_store`)
    RUN/report.html
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import secrets
from pathlib import Path

from .errors import SFRError
from .io import read_json

#: A run id as :func:`new_run_id` makes it (UTC time, 4 hex digits): a name, never a path.
RUN_ID_PATTERN = re.compile(r"\d{8}-\d{6}-[0-9a-f]{4}")
RUNS_FOLDER = "runs"
LATEST_NAME = "latest"
#: The files of one case in ``RUN/pseudo``, after the case name (the order of :mod:`.review`).
CASE_FILES = {"label": ".nii.gz", "confidence": "_confidence.nii.gz", "lowconf": "_lowconf.nii.gz"}


class RunFolder:
    """One run folder: its files by role.  ``RunFolder(path)`` or ``RunFolder.of(project, id)``."""

    CONFIG = "config.json"
    STATUS = "status.json"
    LAUNCHER = "launcher.json"
    CANCEL = "cancel-request"
    EVENTS = "events.jsonl"
    LOG = "log.txt"
    CALIBRATION = "calibration.json"
    STAGES = "stages.json"
    STAGES_FOLDER = "stages"
    ROUNDS = "rounds.json"
    METRICS = "metrics.json"
    SLICES = "slices.json"
    REVIEW = "review.json"
    PSEUDO = "pseudo"
    VNET = "vnet"
    MODEL = "model.pt"
    VALIDATION = "validation"
    EMBEDDINGS = "embeddings"
    REPORT = "report.html"
    STITCH_STAGE = "stitch"
    #: Every record a reader may want, in the order the report lists them.
    RECORDS = (CONFIG, REVIEW, STATUS, STAGES, ROUNDS, METRICS, SLICES, EVENTS, LOG)

    def __init__(self, path: "str | os.PathLike"):
        self.path = Path(path)

    @classmethod
    def of(cls, project_root, run_id: "str | None" = None) -> "RunFolder":
        return cls(run_dir(project_root, run_id))

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def run_id(self) -> str:
        return self.path.name

    # ------------------------------------------------------------ files by role
    config = property(lambda self: self.path / self.CONFIG)
    status = property(lambda self: self.path / self.STATUS)
    launcher = property(lambda self: self.path / self.LAUNCHER)
    cancel_request = property(lambda self: self.path / self.CANCEL)
    events = property(lambda self: self.path / self.EVENTS)
    log = property(lambda self: self.path / self.LOG)
    calibration = property(lambda self: self.path / self.CALIBRATION)
    stages = property(lambda self: self.path / self.STAGES)
    rounds = property(lambda self: self.path / self.ROUNDS)
    metrics = property(lambda self: self.path / self.METRICS)
    slices = property(lambda self: self.path / self.SLICES)
    review = property(lambda self: self.path / self.REVIEW)
    pseudo = property(lambda self: self.path / self.PSEUDO)
    vnet = property(lambda self: self.path / self.VNET)
    model = property(lambda self: self.path / self.VNET / self.MODEL)
    validation = property(lambda self: self.path / self.VALIDATION)
    embeddings = property(lambda self: self.path / self.EMBEDDINGS)
    report = property(lambda self: self.path / self.REPORT)

    # ------------------------------------------------------------ stages
    @staticmethod
    def stage_name(kind: str, round_: "int | None" = None) -> str:
        """The folder name of a stage: ``kind`` alone, or ``<kind>-r<round>`` for a round's stage."""
        return kind if round_ is None else f"{kind}-r{int(round_)}"

    @staticmethod
    def legacy_kind(name: str) -> str:
        """The kind of a stage folder named without :meth:`stage_name`'s record (older runs)."""
        return name.rsplit("-r", 1)[0]

    def stage(self, kind: str, round_: "int | None" = None) -> Path:
        return self.path / self.STAGES_FOLDER / self.stage_name(kind, round_)

    def stage_folders(self, kind: str) -> list:
        """The folders of stage ``kind`` in every round of this run (may not be finished)."""
        return sorted((self.path / self.STAGES_FOLDER).glob(self.stage_name(kind, 0)[:-1] + "*"))

    @property
    def stitch_pictures(self) -> list:
        return sorted(self.stage(self.STITCH_STAGE).glob("*.png"))

    def stage_records(self) -> dict:
        """``stages.json``: ``{stage: {"key", "status", "kind", "round", ...}}`` (no file: empty)."""
        return read_json(self.stages, "run's stage records", missing={}, damaged={})

    def final_round(self) -> "int | None":
        """The round whose results were published (``rounds.json``), None before the run ended."""
        data = read_json(self.rounds, "run's round records", missing={}, damaged={})
        value = data.get("final_round") if isinstance(data, dict) else None
        return int(value) if isinstance(value, int) else None

    # ------------------------------------------------------------ cases
    def case_file(self, case: str, kind: str = "label") -> Path:
        """``RUN/pseudo/<case><suffix>`` for ``kind`` in :data:`CASE_FILES` (the file may not exist)."""
        return self.pseudo / f"{case}{CASE_FILES[kind]}"

    def read_review(self) -> dict:
        """``review.json`` as ``{case: entry}`` (no file: empty)."""
        data = read_json(self.review, "review.json", missing={})
        out = {}
        for entry in data.get("cases", []) if isinstance(data, dict) else []:
            if isinstance(entry, dict) and "case" in entry:
                out[str(entry["case"])] = entry
        return out

    def cases_not_in(self, case_names) -> list:
        """The cases this run reviewed that ``case_names`` (a project's) lacks, sorted.  A run whose
        recorded project lies elsewhere is this project's own (moved or renamed as a whole) only
        when this is empty; else it was copied from another project."""
        return sorted(set(self.read_review()) - {str(c) for c in case_names})

    def pseudo_cases(self) -> list:
        """Names of the cases with a pseudo-label in the run, sorted."""
        if not self.pseudo.is_dir():
            return []
        extra = tuple(suffix for kind, suffix in CASE_FILES.items() if kind != "label")
        names = []
        for path in sorted(self.pseudo.glob("*" + CASE_FILES["label"])):
            if path.name.startswith(".") or path.name.endswith(extra):
                continue
            names.append(path.name[: -len(CASE_FILES["label"])])
        return names

    def result_cases(self, review: "dict | None" = None) -> list:
        """The cases to show: those with a pseudo-label, then reviewed ones whose label file
        exists but was not listed (kept in review order)."""
        names = self.pseudo_cases()
        for case in review if review is not None else self.read_review():
            if case not in names and self.case_file(case).exists():
                names.append(case)
        return names


# names older code imports
REVIEW_JSON = RunFolder.REVIEW
PSEUDO_FOLDER = RunFolder.PSEUDO


# --------------------------------------------------------------------------- runs/ and runs/latest


def runs_dir(project_root: "str | os.PathLike") -> Path:
    return Path(project_root) / RUNS_FOLDER


def new_run_id() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def is_run_id(text) -> bool:
    return isinstance(text, str) and RUN_ID_PATTERN.fullmatch(text) is not None


def check_run_id(run_id: str, where: "str | os.PathLike") -> str:
    """``run_id`` when it has the engine's run-id pattern; SFRError naming ``where`` otherwise."""
    if not is_run_id(run_id):
        shown = run_id if len(run_id) <= 60 else run_id[:57] + "..."
        raise SFRError(f"run {shown!r} not found: not a run id (YYYYMMDD-HHMMSS-xxxx, a name inside runs/, "
                       "never a path)",
                       where)
    return run_id


def latest_run_id(project_root) -> "str | None":
    """The id in ``runs/latest`` (None when there is no run); SFRError when it is not a run id."""
    p = runs_dir(project_root) / LATEST_NAME
    try:
        text = p.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise SFRError(f"cannot read the latest-run pointer ({exc})", p) from None
    return check_run_id(text, p) if text else None


def set_latest(project_root, run_id: str) -> None:
    check_run_id(run_id, runs_dir(project_root) / LATEST_NAME)
    d = runs_dir(project_root)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{LATEST_NAME}-{os.getpid()}"
    tmp.write_text(run_id + "\n", encoding="utf-8")
    os.replace(tmp, d / LATEST_NAME)


def contained(path: Path, folder: Path) -> bool:
    """True when ``path``, links resolved, lies inside ``folder`` (links resolved)."""
    try:
        return Path(path).resolve().is_relative_to(Path(folder).resolve())
    except OSError:
        return False


def run_dir(project_root, run_id: "str | None" = None) -> Path:
    """The folder of ``run_id`` (default: the latest run); SFRError when there is none, when the
    id is not a run id, or when the folder leads out of ``runs/``."""
    rid = check_run_id(run_id, runs_dir(project_root)) if run_id else latest_run_id(project_root)
    if rid is None:
        raise SFRError("no run yet in this project (start one with 'sfr run')", runs_dir(project_root))
    d = runs_dir(project_root) / rid
    if not d.is_dir():
        raise SFRError(f"run {rid} not found", d)
    if not contained(d, runs_dir(project_root)):
        raise SFRError(f"run {rid} leads out of the project's runs folder (a link?)", d)
    return d


# --------------------------------------------------------------------------- readers by path


def case_file(run_path: "str | os.PathLike", case: str, kind: str = "label") -> Path:
    return RunFolder(run_path).case_file(case, kind)


def read_review(run_path: "str | os.PathLike") -> dict:
    return RunFolder(run_path).read_review()


def pseudo_cases(run_path: "str | os.PathLike") -> list:
    return RunFolder(run_path).pseudo_cases()


def result_cases(run_path: "str | os.PathLike", review: "dict | None" = None) -> list:
    return RunFolder(run_path).result_cases(review)
