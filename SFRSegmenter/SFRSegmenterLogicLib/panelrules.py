"""Rules of the panel that need no Qt: which finished run the Results list shows."""

from __future__ import annotations


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


#: How the panel gives a checkpoint file (the Settings section's field).
CHECKPOINT_GIVE = "choose the file under Settings > Checkpoint"


def check_checkpoint(settings) -> None:
    """Raise SFRError (one line naming the file) when the chosen backbone's base weights are not
    there: the engine's own check (``sam.checkpoints.locate_checkpoint``, no torch), run before
    anything is exported or started, so a ViT run never fails after stitching."""
    from SFRSegmenterLib.sam.checkpoints import locate_checkpoint

    download = bool((settings.sam_options or {}).get("download"))
    locate_checkpoint(settings.backbone, settings.checkpoint or None, can_download=download,
                      give=CHECKPOINT_GIVE, download_hint=None)
