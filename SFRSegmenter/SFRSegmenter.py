"""SFR Segmenter: label a few volumes, pseudo-label the rest in the background, review, correct.

The Qt layer here is thin: the widget is laid out in ``Resources/UI/SFRSegmenter.ui`` and every
decision about MRML nodes, project files and the background run lives in the plain-Python
package ``SFRSegmenterLogicLib`` (tested with pytest on ``slicer-core``).  The engine
(``SFRSegmenterLib``) runs detached in its own process, started from the command lines of the
engine's run contract (``SFRSegmenterLib.runcontrol``): closing the scene or Slicer does not stop
it, and entering the module follows a running run again.  Every child process (the run's launcher,
Apply model, the install, a checkpoint download) goes through the logic's ``SubprocessRunner``,
whose output a reader thread collects and the panel's timer delivers: the window never waits.
"""

import logging
import os
import sys
import time

import qt
import slicer
from slicer.i18n import tr as _  # marks a text for translation (Slicer's module template)
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# In a source checkout the engine sits next to this module's folder; once installed both are
# in the same qt-scripted-modules folder, which Slicer already puts on sys.path.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_REPO_ROOT, "SFRSegmenterLib")) and _REPO_ROOT not in sys.path:
    sys.path.append(_REPO_ROOT)

from SFRSegmenterLib.errors import SFRError  # noqa: E402
from SFRSegmenterLogicLib import cases, edits, environment, jobs, provenance  # noqa: E402
from SFRSegmenterLogicLib import checkpoints as checkpointoffers  # noqa: E402
from SFRSegmenterLogicLib import panelrules, panelstate, review, sampledata, session  # noqa: E402
from SFRSegmenterLogicLib.runner import SubprocessRunner  # noqa: E402

ROLE_CHOICES = [(_("Automatic"), ""), (_("Labeled"), "labeled"), (_("Unlabeled"), "unlabeled"),
                (_("Validation"), "validation"), (_("Excluded"), cases.EXCLUDED)]
#: Window title of the panel's dialogs.
TITLE = _("SFR Segmenter")


def fillCombo(combo, items, current=None):
    """Put ``(label, data)`` items into ``combo``; select the item whose data is ``current``."""
    combo.clear()
    for label, data in items:
        combo.addItem(label, data)
    if current is not None:
        combo.setCurrentIndex(max(0, combo.findData(current)))
    return combo


#
# Module
#


class SFRSegmenter(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SFR Segmenter")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations", "SegmentEditor"]
        self.parent.contributors = ["SFR Segmenter developers"]
        self.parent.helpText = _(
            "Label a few volumes, and SFR (Stitch, Fine-tune SAM, Re-train) segments the rest in "
            "the background. SFR+ scores each result and flags the slices worth a look; accept or "
            "correct them and retrain. See the <a href='https://github.com/SFRSegmenter/SlicerSFR#use-it-in-3d-slicer'>"
            "documentation</a>."
        )
        self.parent.acknowledgementText = _(
            "Method: Li et al., SFR / SFR+, IEEE Transactions on Medical Imaging, 2025. "
            "Sample data: Medical Segmentation Decathlon (hippocampus), CC-BY-SA 4.0."
        )
        # the bundled hippocampus sample in the Sample Data module, once Slicer has started
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Add the bundled hippocampus sample (2 segmentations, 5 volumes) to the Sample Data module."""
    import SampleData  # Slicer's Sample Data module (Modules/Scripted/SampleData/SampleData.py)

    icon = os.path.join(os.path.dirname(__file__), "Resources", "Icons", "SFRSegmenter.png")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(**sampledata.sample_source(thumbnail=icon))


#
# Logic
#


class SFRSegmenterLogic(session.PanelJobs, ScriptedLoadableModuleLogic):
    """Slicer-facing entry points; the jobs are ``session.PanelJobs``' (Qt-free, tested).  Slicer's
    base comes last: its ``__init__`` calls ``super().__init__()``, which must reach ``object``."""

    SETTINGS_KEY_PROJECT = "SFRSegmenter/LastProjectFolder"

    def __init__(self, runnerFactory=SubprocessRunner):
        ScriptedLoadableModuleLogic.__init__(self)
        session.PanelJobs.__init__(self, slicer.mrmlScene, runnerFactory, slicer.app.temporaryPath)

    @staticmethod
    def defaultProjectFolder():
        return environment.default_project_folder(slicer.app.defaultScenePath)

    def rememberedProjectFolder(self):
        return slicer.util.settingsValue(self.SETTINGS_KEY_PROJECT, "") or self.defaultProjectFolder()

    def rememberProjectFolder(self, folder):
        qt.QSettings().setValue(self.SETTINGS_KEY_PROJECT, folder)


#
# Widget
#


class SFRSegmenterWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.ui = None
        self._table = cases.CasesTable()  # the cases, and the picks and roles kept across refreshes
        self._flagged = panelrules.FlaggedCursor()
        self._devicesProbed = False
        self._showingState = True  # no writes into the parameter node before it has been read once

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SFRSegmenter.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SFRSegmenterLogic()
        self._versionProblem = environment.version_problem(environment.slicer_version())

        fillCombo(self.ui.backboneComboBox, [(label, value) for value, label in jobs.BACKBONES])
        fillCombo(self.ui.sslComboBox, [(label, value) for value, label in jobs.SSL_METHODS])
        self._fillDevices(probeTorch=False)
        self.ui.projectPathLineEdit.currentPath = self.logic.rememberedProjectFolder()
        for table in (self.ui.casesTableWidget, self.ui.flaggedSlicesTableWidget):
            table.horizontalHeader().setSectionResizeMode(qt.QHeaderView.Stretch)
            table.verticalHeader().setVisible(False)

        self.ui.refreshCasesButton.connect("clicked(bool)", self.refreshCases)
        self.ui.projectPathLineEdit.connect("currentPathChanged(QString)", self._onProjectFolderChanged)
        self.ui.backboneComboBox.connect("currentIndexChanged(int)", self._updateCheckpointEnabled)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self._updateDeviceInfo)
        self.ui.settingsCollapsibleButton.connect("contentsCollapsed(bool)", self._onSettingsCollapsed)
        self.ui.runButton.connect("clicked(bool)", self.onRun)
        self.ui.stopButton.connect("clicked(bool)", self.onStop)
        self.ui.loadResultsButton.connect("clicked(bool)", self.onLoadResults)
        self.ui.showConfidenceCheckBox.connect("toggled(bool)", lambda _on: self._showOverlay())
        self.ui.confidenceThresholdSliderWidget.connect("valueChanged(double)", lambda _v: self._showOverlay())
        self.ui.overlayOpacitySliderWidget.connect("valueChanged(double)", lambda _v: self._showOverlay())
        # arrow keys move the current cell; a click on the current row shows it again
        self.ui.flaggedSlicesTableWidget.connect("currentCellChanged(int,int,int,int)",
                                                 lambda row, _c, _pr, _pc: self.onFlaggedSliceClicked(row, 0))
        self.ui.flaggedSlicesTableWidget.connect("cellClicked(int,int)", self.onFlaggedSliceClicked)
        self.ui.nextFlaggedButton.connect("clicked(bool)", lambda _c: self.stepFlagged(+1))
        self.ui.previousFlaggedButton.connect("clicked(bool)", lambda _c: self.stepFlagged(-1))
        self.ui.reviewCaseComboBox.connect("currentIndexChanged(int)", lambda _i: self._showSelectedCase())
        self.ui.acceptButton.connect("clicked(bool)", self.onAccept)
        self._setupSegmentEditor()
        self.ui.saveCorrectionButton.connect("clicked(bool)", self.onSaveCorrection)
        self.ui.retrainButton.connect("clicked(bool)", self.onRetrain)
        self.ui.applyModelButton.connect("clicked(bool)", self.onApplyModel)
        self._connectPanelState()

        self.timer = qt.QTimer()
        self.timer.setInterval(250)
        self.timer.connect("timeout()", self._onTimer)
        # the cases table follows the scene: volumes and segmentations added or removed (once the
        # burst of nodes a load adds is over)
        self.sceneChangedTimer = qt.QTimer()
        self.sceneChangedTimer.setSingleShot(True)
        self.sceneChangedTimer.setInterval(500)
        self.sceneChangedTimer.connect("timeout()", self._onSceneChanged)
        for event in (slicer.mrmlScene.NodeAddedEvent, slicer.mrmlScene.NodeRemovedEvent):
            self.addObserver(slicer.mrmlScene, event, lambda _caller, _event: self.sceneChangedTimer.start())
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self._showPanelState)
        slicer.app.connect("aboutToQuit()", self._onAboutToQuit)
        self._updateCheckpointEnabled()
        if self._versionProblem:
            self.ui.statusLabel.text = self._versionProblem
        self._updateButtons()
        self.refreshCases()
        self._showPanelState()

    def cleanup(self):
        # a running run goes on without the panel (it is detached); only stop following it
        self.removeObservers()
        if getattr(self, "sceneChangedTimer", None) is not None:
            self.sceneChangedTimer.stop()
        if getattr(self, "timer", None) is not None:
            self.timer.stop()

    def onReload(self):
        # the logic and engine packages load again from disk with the module file (reloading.py)
        from SFRSegmenterLogicLib import reloading

        reloading.forget_packages()
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self):
        self._showPanelState()
        self.refreshCases()
        self._followRunningRun()
        self.ui.segmentEditorWidget.installKeyboardShortcuts()

    def exit(self):
        self.ui.segmentEditorWidget.setActiveEffect(None)
        self.ui.segmentEditorWidget.uninstallKeyboardShortcuts()
        self.ui.segmentEditorWidget.removeViewObservations()

    def _setupSegmentEditor(self):
        """The Segment Editor in the panel, on the module's own parameter node (not the Segment
        Editor module's), showing the selected case's pseudo-label on its volume."""
        editor = self.ui.segmentEditorWidget
        editor.setMRMLSegmentEditorNode(edits.editor_node(slicer.mrmlScene))
        editor.setMRMLScene(slicer.mrmlScene)
        editor.setSegmentationNodeSelectorVisible(False)
        editor.setSourceVolumeNodeSelectorVisible(False)
        editor.setAutoShowSourceVolumeNode(False)  # keeps the low-confidence overlay layer

    # ---------------------------------------------------------------- scene events
    def _onSceneChanged(self):
        if self.parent.isEntered:
            self.refreshCases()

    def onSceneStartClose(self, caller, event):
        # the run goes on (it works on the project folder, not on the scene); its nodes leave
        unsaved = edits.unsaved_results(slicer.mrmlScene)
        if unsaved:  # the close cannot be refused here: say what is lost
            self._log("warning: " + edits.unsaved_message(unsaved, _("Closing the scene")))
        self.logic.results = {}
        self.ui.segmentEditorWidget.setSegmentationNode(None)

    def onSceneEndClose(self, caller, event):
        self._table.forget_choices()
        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(edits.editor_node(slicer.mrmlScene))
        self.ui.reviewCaseComboBox.clear()
        self._fillFlagged([])
        self._updateButtons()
        self._writePanelState()  # the closed scene's node is empty: the panel keeps its settings
        if self.parent.isEntered:
            self.refreshCases()

    def _onAboutToQuit(self):
        self.timer.stop()  # the detached run goes on; the next session follows it again

    # ---------------------------------------------------------------- panel state, saved with the scene
    # (a plain vtkMRMLScriptedModuleNode: slicer.parameterNodeWrapper is not in slicer-core, so no test could run it)
    def _connectPanelState(self):
        for kind, signal in (("path", "currentPathChanged(QString)"), ("combo", "currentIndexChanged(int)"),
                             ("check", "toggled(bool)"), ("slider", "valueChanged(double)")):
            for name in panelstate.widget_names(kind):
                getattr(self.ui, name).connect(signal, self._writePanelState)

    def _writePanelState(self, *_args):
        if not self._showingState:
            panelstate.write(self.logic.getParameterNode(), panelstate.from_widgets(self.ui))

    def _showPanelState(self, *_args):
        self._showingState = True  # the widgets' signals write nothing meanwhile (show writes the node once)
        try:
            warnings = panelstate.show(self.logic.getParameterNode(), self.ui, self.logic.rememberedProjectFolder())
        finally:
            self._showingState = False
        self._log(*(f"warning: {line}" for line in warnings))

    # ---------------------------------------------------------------- project folder
    def projectFolder(self):
        return self.ui.projectPathLineEdit.currentPath or self.logic.defaultProjectFolder()

    def _onProjectFolderChanged(self, path):
        if path:
            self.logic.rememberProjectFolder(path)
        self.refreshCases()
        self._followRunningRun()

    def _followRunningRun(self):
        """Follow a run of this project that is still running (started before, perhaps in an
        earlier session): progress, log and Stop work as for a run started now."""
        job = self.logic.follow_run(self.projectFolder(), self._onProgress, self._log, self._onFinished)
        if job is not None and job.action == "follow" and not self.timer.isActive():
            self._log(job.start_line())
        self._followJobs()

    # ---------------------------------------------------------------- cases table

    def refreshCases(self, *_args):
        if self.ui is None:
            return
        rows, lines = self._table.refresh(slicer.mrmlScene, self.projectFolder())
        self._log(*lines)
        table = self.ui.casesTableWidget
        table.setRowCount(len(rows))
        for index, row in enumerate(rows):
            item = qt.QTableWidgetItem(row.name)
            item.setToolTip(row.volume_name)
            table.setItem(index, 0, item)
            for column, choices, value, chosen in ((1, row.choices, row.picked, self._table.picks),
                                                   (2, ROLE_CHOICES, row.role, self._table.roles)):
                combo = fillCombo(qt.QComboBox(), choices, value)
                combo.connect("currentIndexChanged(int)",
                              lambda _i, n=row.name, c=combo, d=chosen: d.__setitem__(n, c.currentData))
                table.setCellWidget(index, column, combo)
            table.setItem(index, 3, qt.QTableWidgetItem(row.state))
        self._fillRuns()

    # ---------------------------------------------------------------- settings
    def _fillDevices(self, probeTorch):
        """The device menu; with ``probeTorch`` the GPUs as a short child process sees them."""
        choices, error = self.logic.device_choices(probeTorch)
        if error:
            self._log(error)
        fillCombo(self.ui.deviceComboBox, [(c.label, c.value) for c in choices], self.ui.deviceComboBox.currentData)
        self._updateDeviceInfo()

    def _onSettingsCollapsed(self, collapsed):
        if not collapsed and not self._devicesProbed:
            self._devicesProbed = True
            with slicer.util.WaitCursor():
                self._fillDevices(probeTorch=True)

    def _updateDeviceInfo(self, *_args):
        self.ui.deviceInfoLabel.text = environment.device_info(self.ui.deviceComboBox.currentText, self._devicesProbed)

    def _updateCheckpointEnabled(self, *_args):
        self.ui.checkpointPathLineEdit.enabled = panelrules.takes_checkpoint(self.ui.backboneComboBox.currentData)

    def settings(self):
        return panelstate.from_widgets(self.ui).run_settings()

    # ---------------------------------------------------------------- install, checkpoint download
    def ensureDependencies(self):
        """True when the engine's packages are there; else offer the install, which runs in child
        processes (Run stops here; press it again once the install has finished)."""
        missing = environment.missing_requirements()
        if not missing:
            return True
        if slicer.util.confirmOkCancelDisplay(environment.install_question(missing),
                                              windowTitle=_("SFR Segmenter: install dependencies")):
            job = environment.install_job(missing, slicer.app.temporaryPath, self.logic.runner_factory)
            self._startTask(job, lambda done: environment.install_outcome(done, missing, sys.modules))
        return False

    def _checkCheckpoint(self, settings):
        """The backbone's checkpoint is there, or offered for download (Run stops meanwhile)."""
        offer = checkpointoffers.download_offer(settings)
        if offer is not None and slicer.util.confirmYesNoDisplay(
                checkpointoffers.offer_question(offer), windowTitle=_("SFR Segmenter: download the checkpoint")):
            job = checkpointoffers.download_job(offer, self.logic.runner_factory)
            self._startTask(job, lambda done: checkpointoffers.download_outcome(done, offer))
            return False
        panelrules.check_checkpoint(settings)  # one line naming the missing file
        return True

    def _startTask(self, job, outcome):
        """Run the install or a download: its lines in the log and the status line as they come,
        and at its end one message (``outcome(job)``) naming what failed, if anything did."""
        def onLine(kind, text):
            if kind == "status":
                self.ui.statusLabel.text = text
            else:
                self._log(text)

        def onFinished(done):
            message = outcome(done)
            self.ui.statusLabel.text = message
            self._log(message)
            if done.state != "done":
                slicer.util.errorDisplay(message, windowTitle=TITLE)
            self._fillDevices(probeTorch=self._devicesProbed)
            self._updateButtons()

        self.logic.start_task(job, onLine, onFinished)
        self._followJobs()

    # ---------------------------------------------------------------- run
    def onRun(self, *_args, warm_start=None):
        """Run SFR: the checks of ``panelrules.RUN_STEPS`` in their order; nothing is written
        before the export step."""
        folder = self.projectFolder()
        settings = self.settings()
        settings.warm_start = warm_start  # Retrain: from the newest finished run's models
        entries = self._table.entries(slicer.mrmlScene)

        def export_cases():
            with slicer.util.WaitCursor():
                self._log(f"exporting the cases into {folder}")
                self.logic.export_project(folder, entries)
            return True

        def start():
            self.ui.logTextEdit.clear()
            self.ui.progressBar.setValue(0)
            job = self.logic.start_run(folder, settings, self._onProgress, self._log, self._onFinished)
            self._log(job.start_line())
            self.ui.statusLabel.text = _("Starting...")
            return True

        stopped = panelrules.run_in_order({
            "version": lambda: panelrules.check_version(self._versionProblem),
            "dependencies": self.ensureDependencies,
            "checkpoint": lambda: self._checkCheckpoint(settings),
            "cases": lambda: panelrules.check_cases(entries, folder) or True,
            "unsaved_edits": lambda: self._confirmUnsavedEdits(_("Run SFR")),
            "lock": lambda: panelrules.check_project_free(folder) or True,
            "resources": self._confirmResources,
            "export": export_cases,
            "start": start,
        })
        if stopped is not None:
            if stopped[1]:
                slicer.util.errorDisplay(stopped[1], windowTitle=TITLE)
            return
        self._followJobs()
        self.refreshCases()

    def onRetrain(self, *_args):
        """Retrain after corrections: a warm start from the latest finished run when there is one."""
        self.onRun(warm_start=panelrules.retrain_warm_start(self.projectFolder()))

    def _confirmUnsavedEdits(self, action):
        """True when no pseudo-label has unsaved edits, or the user goes on without them."""
        unsaved = edits.unsaved_results(slicer.mrmlScene)
        if not unsaved:
            return True
        question = _("{action} anyway?").format(action=action)
        return slicer.util.confirmYesNoDisplay(edits.unsaved_message(unsaved, action) + "\n\n" + question,
                                               windowTitle=_("SFR Segmenter: unsaved corrections"))

    def _confirmResources(self):
        """Say what the chosen device offers; ask when it looks short for the chosen backbone."""
        line, warnings = self.logic.resource_warnings(self.settings())
        self._log(line)
        if not warnings:
            return True
        return slicer.util.confirmYesNoDisplay("\n\n".join(warnings) + "\n\n" + _("Start the run anyway?"),
                                               windowTitle=_("SFR Segmenter: GPU and memory"))

    def onStop(self, *_args):
        job = self.logic.job
        if job is None or not job.is_active():
            return
        text = _("Stop run {run}?\n\nIt stops at its next safe point; everything finished is kept, and Run SFR "
                 "with the same settings continues it. (Closing the scene or Slicer does not stop a run.)"
                 ).format(run=job.run_id or "")
        if not slicer.util.confirmOkCancelDisplay(text, windowTitle=_("SFR Segmenter: stop the run")):
            return
        self.logic.stop_run()
        self.ui.statusLabel.text = _("Stopping at the next safe point...")
        self._updateButtons()

    def _followJobs(self):
        """Deliver the jobs' output from the timer while one is active; set the buttons."""
        if self.logic.active_jobs() and not self.timer.isActive():
            self.timer.start()
        self._updateButtons()

    def _onTimer(self):
        for error in self.logic.poll():
            self._log(error)
        if not self.logic.active_jobs():
            self.timer.stop()

    def _onProgress(self, job):
        fraction, text = job.progress.panel(job.status)  # never goes back; a total fixed from the start
        self.ui.progressBar.setValue(int(round(100 * fraction)))
        self.ui.statusLabel.text = text
        self._updateButtons()

    def _onFinished(self, job):
        """Show how the followed run ended; its results and links come from the job's project."""
        messages = {
            "done": _("Finished"),
            "cancelled": _("Stopped (Run SFR with the same settings continues where it stopped)"),
            "crashed": _("The engine process ended without finishing (Run SFR continues it)"),
            "failed": _("Failed: {error}").format(error=job.error or _("see the log")),
        }
        self.ui.statusLabel.text = messages.get(job.state, job.state)
        view = panelrules.finished_view(job.project, self.projectFolder(), job.run_id, job.state)
        self.ui.linksLabel.text = view["links"]
        self._log(*view["lines"])
        if job.state == "done":
            self.ui.progressBar.setValue(100)
        if view["load"]:
            self._fillRuns(justFinished=job.run_id)
            self.onLoadResults()
        self._updateButtons()
        self.refreshCases()

    def _log(self, *lines):
        for text in lines:
            if self.ui is not None:
                self.ui.logTextEdit.appendPlainText(text)
            logging.info(f"SFRSegmenter: {text}")

    def _updateButtons(self):
        enabled = panelrules.enabled_buttons(self._versionProblem, finished_runs=self.ui.resultsRunComboBox.count,
                                             results_loaded=bool(self.logic.results), flagged_slices=len(self._flagged),
                                             **self.logic.state())
        for name, on in enabled.items():
            getattr(self.ui, name).enabled = on

    # ---------------------------------------------------------------- results
    def _fillRuns(self, justFinished=None):
        """The finished runs of the project, newest first, in the results combo box."""
        items, shown, lines = panelrules.results_menu(self.projectFolder(), self.ui.resultsRunComboBox.currentData,
                                                      justFinished)
        self._log(*lines)
        fillCombo(self.ui.resultsRunComboBox, items, shown)
        self._updateButtons()

    def onLoadResults(self, *_args):
        runId = self.ui.resultsRunComboBox.currentData or None
        try:
            with slicer.util.WaitCursor():
                results = self.logic.load_results(self.projectFolder(), runId, self._table.reference_nodes())
        except SFRError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle=TITLE)
            return
        self._fillFlagged(review.flagged_rows(results))
        fillCombo(self.ui.reviewCaseComboBox, review.case_menu(results))
        runId, lines = self.logic.results_summary(self.projectFolder(), results, runId)
        self.ui.linksLabel.text = provenance.links_html(self.projectFolder(), runId)
        self._log(*lines)
        self._updateButtons()
        if len(self._flagged):
            self.stepFlagged(+1)  # the views open on the worst slice of all cases
        else:
            self._showSelectedCase()

    def _fillFlagged(self, rows):
        self._flagged = panelrules.FlaggedCursor(rows)
        table = self.ui.flaggedSlicesTableWidget
        table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            for col, value in enumerate(review.flagged_cells(row)):
                table.setItem(i, col, qt.QTableWidgetItem(value))

    def selectedResult(self):
        case = self.ui.reviewCaseComboBox.currentData
        return self.logic.results.get(case) if case else None

    def _showSelectedCase(self):
        result = self.selectedResult()
        if result is None:
            return
        segmentation, volume, segmentId = review.show_for_editing(slicer.mrmlScene, self.logic.results, result.case)
        editor = self.ui.segmentEditorWidget
        editor.setSegmentationNode(segmentation)
        editor.setSourceVolumeNode(volume)
        editor.setCurrentSegmentID(segmentId)
        self._showOverlay()

    def _showOverlay(self):
        try:
            review.update_overlay(slicer.mrmlScene, self.selectedResult(), self.ui.showConfidenceCheckBox.checked,
                                  self.ui.confidenceThresholdSliderWidget.value,
                                  self.ui.overlayOpacitySliderWidget.value)
        except SFRError as exc:
            self._log(f"error: {exc}")

    def stepFlagged(self, delta):
        """Show the next (+1) or previous (-1) flagged slice across all cases, worst first."""
        entry = self._flagged.step(delta)
        if entry is not None:
            table = self.ui.flaggedSlicesTableWidget
            wasBlocked = table.blockSignals(True)  # shown once, below
            table.setCurrentCell(self._flagged.position, 0)
            table.blockSignals(wasBlocked)
            self._showFlagged(entry)

    def onFlaggedSliceClicked(self, row, column):
        entry = self._flagged.select(row)
        if entry is not None:
            self._showFlagged(entry)

    def _showFlagged(self, entry):
        index = self.ui.reviewCaseComboBox.findData(entry["case"])
        if index >= 0 and index != self.ui.reviewCaseComboBox.currentIndex:
            self.ui.reviewCaseComboBox.setCurrentIndex(index)  # shows the case
        try:
            review.show_flagged(slicer.mrmlScene, self.logic.results, entry)
        except SFRError as exc:
            self._log(f"error: {exc}")

    # ---------------------------------------------------------------- correct
    def onAccept(self, *_args):
        result = self.selectedResult()
        if result is None:
            return
        if edits.has_unsaved_edits(result.segmentation) and not slicer.util.confirmYesNoDisplay(
                _("{case}: the pseudo-label has edits that were not saved. Accept keeps the run's original "
                  "pseudo-label and leaves the edits out (Save correction keeps them).\n\nAccept the original?"
                  ).format(case=result.case),
                windowTitle=_("SFR Segmenter: unsaved corrections")):
            return
        self._saveLabel(self.logic.accept, result.case)

    def onSaveCorrection(self, *_args):
        result = self.selectedResult()
        if result is not None:
            self._saveLabel(self.logic.save_correction, result.case)

    def _saveLabel(self, save, case):
        try:
            self._log(save(self.projectFolder(), case))
        except SFRError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle=TITLE)
            return
        self.refreshCases()

    # ---------------------------------------------------------------- apply the model
    def onApplyModel(self, *_args):
        """Segment the chosen volume with the network of the run chosen under Results."""
        try:
            self.logic.apply_model(self.ui.applyVolumeSelector.currentNode(), self.projectFolder(),
                                  self.ui.resultsRunComboBox.currentData or None, self.settings().device,
                                  self._log, self._onApplied)
        except SFRError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle=TITLE)
            return
        self._followJobs()

    def _onApplied(self, job):
        if job.state != "done":
            slicer.util.errorDisplay(job.error or _("Applying the model failed; see the log."), windowTitle=TITLE)
        self._updateButtons()


#
# Test (runs inside Slicer: Reload and Test, or Slicer --testing)
#


class SFRSegmenterTest(ScriptedLoadableModuleTest):
    """The self-test a Slicer build runs (``runTest``) needs neither a GPU nor the engine's extra
    packages: the bundled sample through the Sample Data module, cases found, project exported.
    The whole workflow with a real ``sfr run`` (tiny test backbone, CPU, minutes) runs on demand:
    set ``SFR_SLICER_FULL_TEST=1`` before Reload and Test, or call ``test_workflow()``."""

    TIMEOUT_S = float(os.environ.get("SFR_SLICER_TEST_TIMEOUT", "1800"))

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_sample_and_project()
        if os.environ.get("SFR_SLICER_FULL_TEST") == "1":
            self.setUp()
            self.test_workflow()

    def _projectFolder(self, name):
        return os.path.join(slicer.app.temporaryPath, "SFRSegmenterTest", f"{name}-{int(time.time())}")

    def test_sample_and_project(self):
        self.delayDisplay("Fetching the hippocampus sample through the Sample Data module")
        import SampleData

        registerSampleData()
        source = sampledata.sample_source()
        logic = SampleData.SampleDataLogic()
        paths = [logic.downloadFileIntoCache(uri, name, checksum)
                 for uri, name, checksum in zip(source["uris"], source["fileNames"], source["checksums"])]
        report = sampledata.quick_check(slicer.mrmlScene, self._projectFolder("quick"), paths)
        self.assertEqual(report["labeled"], list(sampledata.LABELED))
        self.delayDisplay("Sample and project: passed")

    def test_workflow(self):
        report = sampledata.workflow_check(slicer.mrmlScene, self._projectFolder("workflow"), SFRSegmenterLogic(),
                                           slicer.app.processEvents, self.TIMEOUT_S, say=self.delayDisplay)
        self.delayDisplay(f"Test passed: {report}")
