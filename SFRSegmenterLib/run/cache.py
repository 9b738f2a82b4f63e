"""Reuse by content: finished stages and single cases, keyed by what they were computed from.

A stage has a *key*, the sha256 of what it depends on (the version of its code, file contents,
the keys of the stages it reads, its part of the configuration; never file times).  :class:`StageCache` runs a stage
unless a finished one with its key exists: in this run (skipped), or in an earlier run of the
project (copied with hard links).  A stage interrupted (cancel, crash, ``kill -9``) runs again in
its own folder with ``resume=True``.  :class:`CaseCache` does the same for the per-case files of
one stage (``cases.json``: ``{case: {"key": ..., ...}}``), so that adding one case to a project
computes only that case.

Nothing here knows what a stage computes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from .. import events, jobs
from ..errors import Cancelled
from ..io import inside, read_json, write_json_atomic
from ..runfolder import RunFolder
from .versions import stage_version

STAGES_JSON = RunFolder.STAGES
STAGE_JSON = "stage.json"
CASES_JSON = "cases.json"


def make_key(kind: str, *parts) -> str:
    """A short sha256 of the stage ``kind``, its code version (:mod:`.versions`) and ``parts``
    (JSON, keys sorted)."""
    blob = json.dumps([kind, {"code": stage_version(kind)}, *parts], sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:20]


def link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes ``src`` (a hard link where possible), atomically."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".tmp-link-{os.getpid()}-{dst.name}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a finished folder (hard links where possible), atomically: ``dst`` appears complete."""
    tmp = dst.with_name(f".tmp-{dst.name}-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)

    def _copy(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, tmp, copy_function=_copy)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)


class StageCache:
    """Runs the stages of one run folder, skipping, reusing or resuming them by key."""

    def __init__(self, project_root: Path, run_path: Path):
        self.project_root = Path(project_root)
        self.run_path = Path(run_path)
        self.folder = RunFolder(run_path)
        self.stages_path = self.folder.stages
        self.records = read_json(self.stages_path, "run's stage records", missing={})
        self.should_stop = jobs.stop_checker(self.run_path)
        self.index = 0  # stages started so far
        self.planned = 0  # stages the run expects (for progress)
        self._named = {}  # {stage folder name: (kind, round)} of the names made by stage_name

    # ---------------------------------------------------------------- bookkeeping
    def save(self) -> None:
        write_json_atomic(self.stages_path, self.records)

    def stage_name(self, kind: str, round_: "int | None" = None) -> str:
        """The name of stage ``kind`` of round ``round_``; :meth:`run_stage` records both, so
        that :meth:`round_of` and :meth:`kind_of` never parse a folder name."""
        name = RunFolder.stage_name(kind, round_)
        self._named[name] = (kind, round_)
        return name

    def stage_dir(self, name: str) -> Path:
        return self.run_path / RunFolder.STAGES_FOLDER / name

    def round_of(self, stage_dir: Path) -> "int | None":
        """The round a stage of this run belongs to (recorded in ``stages.json``)."""
        return self.records[Path(stage_dir).name].get("round")

    def kind_of(self, stage_dir: Path) -> str:
        """The kind of a stage of this run (``finetune``, ...), as recorded."""
        name = Path(stage_dir).name
        return self.records.get(name, {}).get("kind") or self._named.get(name, (RunFolder.legacy_kind(name),))[0]

    def key_of(self, stage_dir: Path) -> str:
        """The key of a stage of this run (by its folder)."""
        return self.records[Path(stage_dir).name]["key"]

    def check_cancel(self) -> None:
        if self.should_stop():
            raise Cancelled("cancel requested")

    def cases(self, stage_dir: Path) -> "CaseCache":
        """The per-case outputs of a stage folder of this run, reusable from earlier runs."""
        return CaseCache(self, Path(stage_dir))

    def _find_elsewhere(self, key: str) -> Path | None:
        """A finished stage with this key in another run of the project (newest first)."""
        candidates = []
        for rec_path in jobs.runs_dir(self.project_root).glob(f"*/{STAGES_JSON}"):
            if rec_path.parent == self.run_path:
                continue
            # another run's damaged records only mean that run offers nothing to reuse
            for other_name, rec in read_json(rec_path, missing={}, damaged={}).items():
                if rec.get("key") == key and rec.get("status") == "done":
                    d = RunFolder(rec_path.parent).path / RunFolder.STAGES_FOLDER / other_name
                    if (d / STAGE_JSON).exists():
                        candidates.append((rec_path.stat().st_mtime, d))
        return max(candidates)[1] if candidates else None

    # ---------------------------------------------------------------- running
    def run_stage(self, name: str, key: str, fn, reusable: bool = True) -> Path:
        """Run ``fn(out_dir, resume) -> dict`` unless a finished stage with ``key`` exists."""
        self.check_cancel()
        self.index += 1
        d = self.stage_dir(name)
        rec = self.records.get(name)
        events.stage(name, "start", pipeline=True, index=self.index, of=self.planned, key=key)
        if rec and rec.get("key") == key and rec.get("status") == "done" and (d / STAGE_JSON).exists():
            events.stage(name, "skipped", pipeline=True, reason="finished earlier in this run")
            return d
        if reusable and self._reuse(name, key, d):
            return d
        resume = bool(rec and rec.get("key") == key and d.exists())
        if d.exists() and not resume:
            shutil.rmtree(d)
        d.mkdir(parents=True, exist_ok=True)
        previous = float(rec.get("seconds", 0.0)) if resume else 0.0
        self.records[name] = {"key": key, "status": "running", "started": jobs.utcnow(),
                              "seconds": previous, "attempts": (rec or {}).get("attempts", 0) + 1 if resume else 1}
        self.records[name].update(self._identity(name))
        self.save()
        if resume:
            events.log(f"{name}: resuming")
        t0 = time.monotonic()
        try:
            extra = fn(d, resume) or {}
        except Cancelled:
            self.records[name].update(status="cancelled", seconds=round(previous + time.monotonic() - t0, 3))
            self.save()
            raise
        except BaseException:
            self.records[name].update(status="failed", seconds=round(previous + time.monotonic() - t0, 3))
            try:
                self.save()
            except OSError:
                pass
            raise
        write_json_atomic(d / STAGE_JSON, {"name": name, "key": key, **extra})
        self.records[name].update(status="done", seconds=round(previous + time.monotonic() - t0, 3),
                                  finished=jobs.utcnow(), **extra)
        self.save()
        events.stage(name, "done", pipeline=True, seconds=self.records[name]["seconds"])
        return d

    def _identity(self, name: str) -> dict:
        """``{"kind", "round"}`` of a stage named by :meth:`stage_name` (else nothing)."""
        if name not in self._named:
            return {}
        kind, round_ = self._named[name]
        return {"kind": kind, "round": round_}

    def _reuse(self, name: str, key: str, d: Path) -> bool:
        src = self._find_elsewhere(key)
        if src is None:
            return False
        t0 = time.monotonic()
        copy_tree(src, d)
        self.records[name] = {
            "key": key, "status": "done", "reused_from": str(src.relative_to(self.project_root)),
            "seconds": 0.0, "copy_seconds": round(time.monotonic() - t0, 3), "finished": jobs.utcnow(),
            **self._identity(name),
        }
        self.save()
        events.stage(name, "skipped", pipeline=True, reason=f"reused {src.parent.parent.name}")
        events.log(f"{name}: inputs unchanged, reused from run {src.parent.parent.name}")
        return True


class CaseCache:
    """``cases.json`` of one stage folder: each case's key and record, its files reusable.

    A case's files are ``<case><suffix>`` in the stage folder; the first suffix is the file
    whose presence says the case is complete (every file is written atomically).
    """

    def __init__(self, stages: StageCache, folder: Path):
        self.stages = stages
        self.folder = folder
        self.kind = stages.kind_of(folder)  # finished stages of this kind in any round
        self.entries = read_json(folder / CASES_JSON, "stage's case records", missing={})

    def save(self) -> None:
        write_json_atomic(self.folder / CASES_JSON, self.entries)

    def record(self, case: str, entry: dict) -> None:
        self.entries[case] = entry
        self.save()

    def have(self, case: str, key: str, suffix: str) -> dict | None:
        """This folder's entry of ``case`` when it has ``key`` and its ``suffix`` file exists."""
        entry = self.entries.get(case)
        if entry and entry.get("key") == key and inside(self.folder, f"{case}{suffix}").exists():
            return entry
        return None

    def find(self, case: str, key: str) -> Path | None:
        """The newest stage folder of another run whose ``case`` has ``key`` (files present)."""
        runs = jobs.runs_dir(self.stages.project_root)
        if not runs.is_dir():
            return None
        found = sorted((p for run in runs.iterdir() if run.is_dir()
                        for p in (d / CASES_JSON for d in RunFolder(run).stage_folders(self.kind)) if p.exists()),
                       key=lambda p: -p.stat().st_mtime)
        for cases_json in found:
            if cases_json.parent.parent.parent == self.stages.run_path:
                continue
            entry = read_json(cases_json, missing={}, damaged={}).get(case)
            if entry and entry.get("key") == key and (cases_json.parent / f"{case}.nii.gz").exists():
                return cases_json.parent
        return None

    def reuse(self, case: str, key: str, suffixes) -> tuple | None:
        """Link ``case``'s files from an earlier run's stage with ``key``: (its folder, its entry)."""
        src = self.find(case, key)
        if src is None:
            return None
        for suffix in suffixes:
            link_or_copy(src / f"{case}{suffix}", inside(self.folder, f"{case}{suffix}"))
        return src, read_json(src / CASES_JSON, "stage's case records")[case]
