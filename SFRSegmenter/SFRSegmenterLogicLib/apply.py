"""Apply a finished run's network to any loaded volume: the next patient, without a new run.

:class:`ApplyJob` checks the volume, writes it to a temporary folder (through Slicer's storage
node, so the engine sees its exact geometry), runs the engine's ``sfr predict`` with the run's
re-trained network (``RUN/vnet``, command line from the run contract
``SFRSegmenterLib.runcontrol.predict_command``) through the same kind of runner the panel uses
for runs, and loads the result into *new* nodes: a segmentation ``"<volume> SFR (<run>)"`` (one
segment per class of the project, named and coloured as in the project) and its confidence map.
Nothing in the scene, the project or any user file is written; the temporary folder is removed
once the result is loaded.  Nothing here imports Qt.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from SFRSegmenterLib import runcontrol
from SFRSegmenterLib.errors import SFRError
from SFRSegmenterLib.manifest import load_project
from SFRSegmenterLib.runfolder import RunFolder

from .nodes import (ATTR_CASE, ATTR_KIND, ATTR_PROJECT, ATTR_RUN, KIND_CONFIDENCE, KIND_PREDICTION, TAG_KIND,
                    TAG_RUN, remove_node, write_node)
from .results import REF_CONFIDENCE, REF_REFERENCE, import_classes, load_confidence_map
from .runner import SubprocessRunner, child_environment, sfr_command

#: The file name the volume is written under in the temporary folder (the engine's case name):
#: fixed, so no volume name can make an output name too long or unsafe.
INPUT_NAME = "volume"


def model_runs(project_root) -> list:
    """``[(run_id, model folder)]``: the project's finished runs that published a network, newest first."""
    found = []
    for status in runcontrol.finished_runs(project_root):
        folder = RunFolder.of(project_root, status["run_id"])
        if folder.model.is_file():
            found.append((status["run_id"], folder.vnet))
    return found


def check_volume(volume) -> None:
    """Raise SFRError (one line naming the node) unless ``volume`` is a single-component scalar
    volume with voxels and no transform left to harden."""
    if volume is None:
        raise SFRError("choose a volume to apply the model to")
    name = volume.GetName()
    if not volume.IsA("vtkMRMLScalarVolumeNode") or volume.IsA("vtkMRMLLabelMapVolumeNode"):
        raise SFRError(f"{name!r} is not a scalar volume; choose an image volume (not a label map)")
    image = volume.GetImageData()
    if image is None or 0 in image.GetDimensions():
        raise SFRError(f"volume {name!r} has no voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise SFRError(f"volume {name!r} has {image.GetNumberOfScalarComponents()} components; the model "
                       "takes single-component (grey-value) volumes")
    transform = volume.GetParentTransformNode()
    if transform is not None:
        raise SFRError(f"volume {name!r} is under the transform {transform.GetName()!r}, which is not hardened: "
                       "harden it (Data module, right-click > Harden transform) before applying the model")


def pick_model(project_root, run_id: "str | None" = None) -> tuple:
    """``(run_id, model folder)``: the chosen finished run's network, or the newest one."""
    runs = model_runs(project_root)
    if not runs:
        raise SFRError("no finished run with a trained model in this project: press Run SFR first",
                       Path(project_root))
    if run_id is None:
        return runs[0]
    for found, folder in runs:
        if found == run_id:
            return found, folder
    raise SFRError(f"run {run_id} is not a finished run with a trained model", Path(project_root))


class ApplyJob:
    """One application of a run's network to one volume.

    :meth:`start` checks and writes the volume and starts ``sfr predict`` (SFRError before
    anything is written when the volume or the model is not usable); :meth:`poll` (from a timer)
    delivers the engine's output; when it has ended ``on_finished(job)`` is called once, with
    ``state`` ``done`` (``segmentation`` and ``confidence`` are the new nodes) or ``failed``
    (``error`` says why).  Every log line goes to ``on_log``.
    """

    def __init__(self, scene, project_root, volume, run_id: "str | None" = None, runner=None,
                 python: "str | None" = None, device: str = "auto", work_root: "str | None" = None):
        self.scene = scene
        self.project = Path(project_root)
        self.volume = volume
        self.run_id = run_id
        self.runner = runner or SubprocessRunner()
        self.python = python
        self.device = device
        self.work_root = work_root
        self.work: Path | None = None
        self.state = "idle"
        self.error: str | None = None
        self.lines: list = []
        self.segmentation = None
        self.confidence = None
        self.on_log: Callable[[str], None] | None = None
        self.on_finished: Callable[["ApplyJob"], None] | None = None

    def is_active(self) -> bool:
        return self.state == "running"

    def start(self, env: "dict | None" = None) -> None:
        check_volume(self.volume)
        self.run_id, model = pick_model(self.project, self.run_id)
        load_project(self.project)  # the classes the result's segments are named by
        self.work = Path(tempfile.mkdtemp(prefix="sfr-apply-", dir=self.work_root))
        try:
            image = write_node(self.scene, self.volume, self.work / "images" / f"{INPUT_NAME}.nii.gz")
        except SFRError:
            shutil.rmtree(self.work, ignore_errors=True)
            raise
        args = sfr_command(*runcontrol.predict_command(model, image, self.work / "out", self.device),
                           python=self.python)
        self.runner.on_line = self._line
        self.runner.on_finished = self._ended
        self.state = "running"
        self._say(f"applying the model of run {self.run_id} to {self.volume.GetName()!r}")
        self.runner.start(args, env=child_environment(env), cwd=str(self.work))

    def poll(self) -> None:
        if self.is_active():
            self.runner.poll()

    def wait(self, timeout_s: float) -> bool:
        """Deliver output until the job ends (tests); True when it ended."""
        self.runner.wait(timeout_s)
        self.poll()
        return not self.is_active()

    # ---------------------------------------------------------------- internals
    def _say(self, text: str) -> None:
        if self.on_log:
            self.on_log(text)

    def _line(self, line: str) -> None:
        self.lines.append(line.rstrip("\n"))

    def _ended(self, returncode: int) -> None:
        try:
            if returncode != 0:
                errors = [line for line in self.lines if "error" in line.lower()] or self.lines[-1:]
                raise SFRError(errors[-1].strip() if errors else f"sfr predict exited with status {returncode}")
            self._load()
            self.state = "done"
            self._say(f"{self.volume.GetName()!r}: segmented with the model of run {self.run_id} into "
                      f"{self.segmentation.GetName()!r}{self._mean_confidence()}")
        except SFRError as exc:
            for node in (self.segmentation, self.confidence):  # no half-loaded result stays
                remove_node(self.scene, node)
            self.segmentation = self.confidence = None
            self.state, self.error = "failed", str(exc)
            self._say(f"error: {exc}")
        finally:
            shutil.rmtree(self.work, ignore_errors=True)
        if self.on_finished:
            self.on_finished(self)

    def _load(self) -> None:
        project = load_project(self.project)
        out = self.work / "out"
        name = self.volume.GetName()
        reference = self.volume

        def new_node():
            node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                self.scene.GenerateUniqueName(f"{name} SFR ({self.run_id})"))
            node.CreateDefaultDisplayNodes()
            node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
            node.SetNodeReferenceID(REF_REFERENCE, reference.GetID())
            for key, value in ((ATTR_KIND, KIND_PREDICTION), (ATTR_CASE, name), (ATTR_RUN, self.run_id),
                               (ATTR_PROJECT, str(project.root))):
                node.SetAttribute(key, value)
            return node

        self.segmentation = import_classes(self.scene, project, out / f"{INPUT_NAME}.nii.gz", reference, new_node,
                                           {TAG_KIND: KIND_PREDICTION, TAG_RUN: self.run_id})
        conf_path = out / f"{INPUT_NAME}_confidence.nii.gz"
        if conf_path.exists():
            self.confidence = load_confidence_map(
                self.scene, project, conf_path, reference, f"{name} SFR confidence ({self.run_id})",
                {ATTR_KIND: KIND_CONFIDENCE, ATTR_CASE: name, ATTR_RUN: self.run_id})
            self.segmentation.SetNodeReferenceID(REF_CONFIDENCE, self.confidence.GetID())

    def _mean_confidence(self) -> str:
        """`` (mean confidence 0.97)`` from the engine's JSON answer, or ""."""
        text = "\n".join(self.lines)
        start = text.find("{")
        try:
            value = json.loads(text[start:])[INPUT_NAME]["mean_confidence"] if start >= 0 else None
        except (ValueError, KeyError, TypeError):
            value = None
        return f" (mean confidence {value:.3f})" if isinstance(value, (int, float)) else ""

