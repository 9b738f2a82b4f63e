"""Rules of the panel that need no Qt: which run the Results list shows, which buttons are
enabled, the order of the checks before Run writes anything, stepping through flagged slices,
and what a finished run shows.  The widget (``SFRSegmenter.py``) only wires Qt to these."""

from __future__ import annotations

from pathlib import Path

from SFRSegmenterLib.errors import SFRError


def run_to_show(run_ids, chosen=None, just_finished=None):
    """The run the Results list selects, among ``run_ids`` (finished runs, newest first).

    A run that just finished wins (the clinician reviews what was just computed, never the
    run selected before it); otherwise the run the user chose while it is still listed;
    otherwise the newest. ``None`` when no run has finished.
    """
    run_ids = list(run_ids)
    for candidate in (just_finished, chosen):
        if candidate and candidate in run_ids:
            return candidate
    return run_ids[0] if run_ids else None


def results_menu(project_root, chosen=None, just_finished=None) -> tuple:
    """``([(label, run id)], run id to select or None, [log lines])`` for the Results list: the
    project's finished runs, newest first, each named with when it finished; the selection is
    :func:`run_to_show`'s.  Runs that cannot be listed give an empty list and one ``error:`` line."""
    from SFRSegmenterLib import runcontrol

    try:
        runs, lines = runcontrol.finished_runs(project_root), []
    except (SFRError, OSError) as exc:
        runs, lines = [], [f"error: {exc}"]
    items = [(f"{st['run_id']} ({st.get('finished') or 'finished'})", st["run_id"]) for st in runs]
    return items, run_to_show([run_id for _label, run_id in items], chosen, just_finished), lines


def check_project_free(project_root) -> None:
    """Raise SFRError (naming the lock file) when a live run, from this panel, the command line or
    another Slicer, holds the project; Run calls this before it exports any label file."""
    from SFRSegmenterLib import jobs

    jobs.ProjectLock(project_root, "").check_free()


def state_run(project_root):
    """The run the State column describes: the newest *finished* run (never a stopped, failed or
    half-written latest run), or None when no run has finished."""
    from SFRSegmenterLib import runcontrol

    runs = runcontrol.finished_runs(project_root)
    return runs[0]["run_id"] if runs else None


def retrain_warm_start(project_root):
    """What Retrain starts from: ``"latest"`` (the newest finished run's models, the engine's
    ``--warm-start latest``) when a run has finished, else None (from scratch, as Run)."""
    return "latest" if state_run(project_root) is not None else None


# --------------------------------------------------------------------------- checkpoint

#: How the panel gives a checkpoint file (the Settings section's field).
CHECKPOINT_GIVE = "choose the file under Settings > Checkpoint"


def takes_checkpoint(backbone) -> bool:
    """Whether the Settings' Checkpoint field applies to ``backbone``: not for weights a package
    bundles (LiteMedSAM) nor for the randomly initialised test model (the engine's registry)."""
    from SFRSegmenterLib.sam.registry import BACKBONES

    spec = BACKBONES.get(backbone)
    return spec is not None and not spec.bundled and not spec.test_only


def check_checkpoint(settings) -> None:
    """Raise SFRError (one line naming the file) when the chosen backbone's base weights are not
    there: the engine's own check (``sam.checkpoints.locate_checkpoint``, no torch), run before
    anything is exported or started, so a ViT run never fails after stitching."""
    from SFRSegmenterLib.sam.checkpoints import locate_checkpoint

    download = bool((settings.sam_options or {}).get("download"))
    locate_checkpoint(settings.backbone, settings.checkpoint or None, can_download=download,
                      give=CHECKPOINT_GIVE, download_hint=None)


# --------------------------------------------------------------------------- buttons

#: The panel's buttons (object names in ``Resources/UI/SFRSegmenter.ui``).
BUTTONS = ("runButton", "retrainButton", "stopButton", "loadResultsButton", "acceptButton",
           "saveCorrectionButton", "nextFlaggedButton", "previousFlaggedButton", "applyModelButton")


def enabled_buttons(version_problem=None, job_state=None, finished_runs: int = 0, results_loaded: bool = False,
                    flagged_slices: int = 0, applying: bool = False, busy: bool = False) -> dict:
    """``{button name: enabled}`` for the panel's state.

    ``job_state`` is the followed run's state (``SFRLogicLib.jobs``: launching, running,
    stopping, done, ...) or None.  While a run is active nothing that writes the project
    (Run, Retrain, Accept, Save correction) or replaces the loaded results is enabled; Stop only
    while the run can still be asked to stop; a Slicer too old for the engine runs nothing.
    Apply model reads only a finished run's network, so a run in progress does not stop it; one
    application at a time (``applying``).  While the dependencies are being installed or a
    checkpoint downloaded (``busy``), nothing that needs them starts (Run, Retrain, Apply model).
    """
    from .jobs import ACTIVE_STATES

    active = job_state in ACTIVE_STATES
    can_run = not active and not version_problem and not busy
    return {
        "runButton": can_run,
        "retrainButton": can_run,
        "stopButton": job_state in ("launching", "running"),
        "loadResultsButton": not active and finished_runs > 0,
        "acceptButton": results_loaded and not active,
        "saveCorrectionButton": results_loaded and not active,
        "nextFlaggedButton": flagged_slices > 0,
        "previousFlaggedButton": flagged_slices > 0,
        "applyModelButton": finished_runs > 0 and not applying and not version_problem and not busy,
    }


# --------------------------------------------------------------------------- Run: the order of checks

#: What Run does, in this order; each step may stop it.  Nothing is written to the project
#: before ``export``: a refusal by any earlier step leaves every file as it was.
RUN_STEPS = ("version", "dependencies", "checkpoint", "cases", "unsaved_edits", "lock", "resources", "export",
             "start")


def run_in_order(steps: dict):
    """Call ``steps[name]()`` for each name of :data:`RUN_STEPS`, in order.

    A step returns a true value to go on, a false one when the user said no; an SFRError is a
    refusal.  Returns None when every step went on, else ``(step name, message)`` of the step
    that stopped (message "" when the user said no).  Every step must be given (KeyError), so
    that a step cannot be left out of the wiring.
    """
    missing = [name for name in RUN_STEPS if name not in steps]
    if missing:
        raise KeyError(f"Run steps not given: {', '.join(missing)}")
    for name in RUN_STEPS:
        try:
            if not steps[name]():
                return name, ""
        except SFRError as exc:
            return name, str(exc)
    return None


def check_version(version_problem) -> bool:
    """Run's first step: raise SFRError with ``version_problem`` (``environment.version_problem``)
    when this Slicer cannot run the engine; True otherwise."""
    if version_problem:
        raise SFRError(version_problem)
    return True


def check_cases(entries, project_root) -> None:
    """Raise SFRError before anything is exported when the table gives the run no labeled or
    no unlabeled case (a case accepted in this panel counts as labeled, as the export makes it)."""
    from .export import planned_roles

    roles = planned_roles(project_root, entries)
    labeled = sorted(name for name, role in roles.items() if role == "labeled")
    if not labeled:
        raise SFRError("no labeled case: draw a segmentation on at least one volume, or pick it in the "
                       "Segmentation column")
    if not any(role == "unlabeled" for role in roles.values()):
        raise SFRError(every_case_labeled(len(labeled), project_root))


def every_case_labeled(labeled: int, project_root) -> str:
    """What Run and Retrain say when no case is left to pseudo-label: SFR learns from unlabeled
    volumes, so a run needs one; the model of a finished run already segments a new volume
    (Apply model), and loading the next volumes lets Retrain learn from every label."""
    from .apply import model_runs

    text = (f"every case is labeled ({labeled}): SFR has nothing left to pseudo-label, so there is nothing "
            "to run. Load the next volumes into Slicer (they are unlabeled cases) and press Retrain: it learns "
            f"from all {labeled} labeled cases and pseudo-labels the new ones")
    try:
        models = model_runs(project_root)
    except SFRError:
        models = []
    if models:
        text += (f". Or segment a volume now with the model of run {models[0][0]}: choose it under Apply the "
                 "model and press Apply model")
    return text


# --------------------------------------------------------------------------- flagged slices


class FlaggedCursor:
    """The flagged slices of the loaded run, worst first across cases, and the one shown.

    :meth:`step` moves to the next (+1) or previous (-1) row, wrapping; from no row, next is the
    worst and previous the last.  :meth:`select` shows a row the user clicked.  Both return the
    row (``{"case", "index", "confidence", ...}``) to show, or None.
    """

    def __init__(self, rows=()):
        self.rows = list(rows)
        self.position = -1

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def current(self):
        return self.rows[self.position] if 0 <= self.position < len(self.rows) else None

    def step(self, delta: int = 1):
        from .review import step

        self.position = step(self.rows, self.position, delta)
        return self.current

    def select(self, row: int):
        if not 0 <= row < len(self.rows):
            return None
        self.position = row
        return self.current


# --------------------------------------------------------------------------- a finished run


def finished_view(job_project, shown_folder, run_id, state: str) -> dict:
    """What the panel shows when the run it followed ends.

    The results and links always come from the *job's* project: ``{"project": its folder,
    "links": the links to it and the run (``provenance.links_html``), "load": load the run's
    results into the Results list, "lines": lines for the log}``.  They are loaded only for a
    finished (``done``) run of the folder the panel shows now; a run of another folder (chosen
    during the run) is named with its folder instead of being looked up in the wrong project.
    """
    from .provenance import links_html

    project = Path(job_project)
    same = shown_folder is not None and Path(shown_folder).resolve() == project.resolve()
    view = {"project": project, "links": links_html(project, run_id), "load": state == "done" and same, "lines": []}
    if state == "done" and not same:
        view["lines"].append(f"run {run_id} finished in project {project} (the panel shows {shown_folder} now); "
                             "choose that project folder to review its results")
    return view
