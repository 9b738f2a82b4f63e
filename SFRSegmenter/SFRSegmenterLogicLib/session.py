"""The panel's jobs, without Qt: the run it follows, Apply model, and one task (the install or a
checkpoint download), each started through a runner and delivered by :meth:`PanelJobs.poll`,
which the widget's timer calls while :meth:`PanelJobs.active_jobs` is not empty.

One of each at a time: a second run, application or task is refused with one line.  The run is
detached (``jobs.SFRJob``): following it again after a restart is :meth:`PanelJobs.follow_run`.
"""

from __future__ import annotations

import os

from SFRSegmenterLib.errors import SFRError

from .runner import SubprocessRunner


class PanelJobs:
    def __init__(self, scene, runner_factory=SubprocessRunner, work_root: "str | None" = None):
        self.scene = scene
        self.runner_factory = runner_factory
        self.work_root = work_root  # where Apply model writes its temporary folder
        self.job = None  # the run followed (jobs.SFRJob)
        self.apply_job = None  # Apply model (apply.ApplyJob)
        self.task = None  # the install or a checkpoint download (tasks.CommandJob)
        self.results = {}  # case -> results.CaseResult of the loaded run

    @staticmethod
    def _active(job) -> bool:
        return job is not None and job.is_active()

    def active_jobs(self) -> list:
        return [job for job in (self.job, self.apply_job, self.task) if self._active(job)]

    def poll(self) -> list:
        """Deliver the output of every active job; the errors it met, one line each."""
        errors = []
        for job in self.active_jobs():
            try:
                job.poll()
            except SFRError as exc:
                errors.append(f"error: {exc}")
        return errors

    def state(self) -> dict:
        """What ``panelrules.enabled_buttons`` needs besides the widget's own counts."""
        return {"job_state": self.job.state if self.job is not None else None,
                "applying": self._active(self.apply_job), "busy": self._active(self.task)}

    # ---------------------------------------------------------------- before a run
    def export_project(self, project, entries):
        """Write the table's cases into the project and check it can run (``export``)."""
        from .export import check_ready_to_run, export_project

        exported = export_project(self.scene, project, entries)
        check_ready_to_run(exported)
        return exported

    @staticmethod
    def resource_warnings(settings) -> tuple:
        """``(a log line saying what the chosen device offers, [what is short for the backbone])``,
        read in a short child process (no torch and no CUDA context in Slicer's process).  A
        package the check needs that is missing is the line, with no warnings (the install step
        reports it); a child that fails is one SFRError."""
        from . import resources

        device = settings.device or "auto"
        try:
            found = resources.probe_in_subprocess(device)
            return f"device: {resources.describe(found)}", resources.warnings(found, settings.backbone, device)
        except ImportError as exc:
            return f"could not check the GPU and memory: {exc}", []

    @staticmethod
    def device_choices(probe: bool) -> tuple:
        """``([environment.DeviceChoice], error or None)`` for the Device menu: ``auto`` and the CPU,
        or with ``probe`` (and torch installed) the GPUs a short child process sees."""
        from . import environment, resources

        if probe and not environment.missing_requirements():
            try:
                return resources.device_facts("auto")[1], None
            except SFRError as exc:
                return environment.available_devices(import_torch=False), f"error: {exc}"
        return environment.available_devices(import_torch=False), None

    # ---------------------------------------------------------------- the run
    def _connect(self, job, on_progress, on_log, on_finished):
        job.on_progress, job.on_log, job.on_finished = on_progress, on_log, on_finished
        self.job = job
        return job

    def start_run(self, project, settings, on_progress=None, on_log=None, on_finished=None):
        """Start a new run, or continue the stopped one with the same settings."""
        from .jobs import SFRJob

        if self._active(self.job):
            raise SFRError("a run is already running on this project; stop it first")
        job = self._connect(SFRJob(project, settings=settings, runner=self.runner_factory()), on_progress, on_log,
                            on_finished)
        job.start()
        return job

    def follow_run(self, project, on_progress=None, on_log=None, on_finished=None):
        """The project's running run (started earlier, perhaps before a restart), or None; the
        run already followed when it is this project's, None when it is another's (one at a time)."""
        from .jobs import SFRJob

        if self._active(self.job):
            return self.job if os.path.abspath(self.job.project) == os.path.abspath(project) else None
        job = SFRJob.follow(project)
        return self._connect(job, on_progress, on_log, on_finished) if job is not None else None

    def stop_run(self) -> None:
        if self.job is not None:
            self.job.stop()

    # ---------------------------------------------------------------- Apply model, tasks
    def apply_model(self, volume, project, run_id=None, device="auto", on_log=None, on_finished=None):
        """Segment ``volume`` with a finished run's network (``sfr predict``) into new nodes."""
        from .apply import ApplyJob

        if self._active(self.apply_job):
            raise SFRError("the model is already being applied; wait until it has finished")
        job = ApplyJob(self.scene, project, volume, run_id=run_id, runner=self.runner_factory(), device=device,
                       work_root=self.work_root)
        job.on_log, job.on_finished = on_log, on_finished
        job.start()
        self.apply_job = job
        return job

    def start_task(self, job, on_line=None, on_finished=None):
        """Start the install or a checkpoint download (a ``tasks.CommandJob``; one at a time)."""
        if self._active(self.task):
            raise SFRError(f"{self.task.what} is still running; wait until it has finished")
        job.on_line, job.on_finished = on_line, on_finished
        self.task = job
        job.start()
        return job

    # ---------------------------------------------------------------- results
    def load_results(self, project, run_id=None, reference_nodes=None) -> list:
        from .results import load_results

        results = load_results(self.scene, project, run_id=run_id, reference_nodes=reference_nodes)
        self.results = {r.case: r for r in results}
        return results

    @staticmethod
    def results_summary(project, results: list, run_id=None) -> tuple:
        """``(run id of the loaded nodes, [log lines])``: how many cases were loaded and which
        cases the run advises labeling next (``labelnext``)."""
        from SFRSegmenterLib import labelnext, runfolder

        from .results import run_of

        run_id = run_of(results[0].segmentation) if results else run_id
        lines = [f"loaded {len(results)} pseudo-labeled cases of run {run_id}"]
        if run_id:
            lines.append(labelnext.summary(labelnext.read_label_next(runfolder.run_dir(project, run_id))))
        return run_id, lines

    # ---------------------------------------------------------------- accept, correct
    def accept(self, project, case: str) -> str:
        """The shown pseudo-label of ``case`` becomes its label (of the run it came from, not the
        newest run); the log line."""
        from .nodes import ATTR_ACCEPTED
        from .provenance import accept_case
        from .results import run_of

        result = self.results[case]
        record = accept_case(self.scene, project, case, run_id=run_of(result.segmentation))
        result.segmentation.SetAttribute(ATTR_ACCEPTED, record["source"])
        return f"{case}: pseudo-label accepted as its label"

    def save_correction(self, project, case: str) -> str:
        """The edited pseudo-label of ``case`` becomes its label: only the corrected slices when
        the case is partially labeled, else the whole segmentation; the log line."""
        from . import partial
        from .provenance import accept_case
        from .results import run_of

        result = self.results[case]
        run_id = run_of(result.segmentation)
        if partial.is_partial(result.segmentation):
            partial.save_corrected_slices(self.scene, project, case, result.segmentation, result.reference,
                                          run_id=run_id)
        else:
            accept_case(self.scene, project, case, run_id=run_id, segmentation_node=result.segmentation,
                        reference=result.reference)
        return f"{case}: correction saved as its label"
