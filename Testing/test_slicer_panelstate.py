"""The panel's state in the module's parameter node, on the real MRML core: written into a
``vtkMRMLScriptedModuleNode``, saved in a ``.mrml`` file by the scene's writer and read back into
another scene; damaged or unknown values fall back to the defaults with one warning each; an empty
node gives the defaults.  The last tests run the widget's own wiring (the module file imported
with stand-ins for the Qt widgets, as in ``test_slicer_widget_tasks``) through a real node."""

from __future__ import annotations

import dataclasses
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SFRSegmenter"))

slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("slicer-core is not installed", allow_module_level=True)

from SFRSegmenterLogicLib import panelstate  # noqa: E402
from SFRSegmenterLogicLib.panelstate import PanelState  # noqa: E402
from test_slicer_widget_tasks import Combo, Thing, module  # noqa: E402,F401 - module: the widget fixture

MODULE = "SFRSegmenter"
CHOSEN = PanelState(project="/data/kidney project/<ct>&\"2\" é", backbone="vit_b", checkpoint="/ckpt/sam b.pth",
                    ssl="ua_mt", sfr_plus=False, device="cuda:1", results_run="run-0003", show_confidence=False,
                    confidence_threshold=0.735, overlay_opacity=0.25)


def parameter_node(scene):
    """The module's parameter node as Slicer's ``getParameterNode`` makes it: a singleton
    ``vtkMRMLScriptedModuleNode`` tagged with the module name."""
    node = scene.GetSingletonNode(MODULE, "vtkMRMLScriptedModuleNode")
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(MODULE)
        node.SetAttribute("ModuleName", MODULE)
        node = scene.AddNode(node)
    return node


def saved_scene(tmp_path, state: PanelState) -> Path:
    scene = slicer.vtkMRMLScene()
    panelstate.write(parameter_node(scene), state)
    path = tmp_path / "saved.mrml"
    scene.SetURL(str(path))
    assert scene.Commit() == 1 and path.is_file()
    return path


def imported(path: Path, scene=None):
    """Load ``path`` into ``scene`` (a new one by default) as Slicer's Load Scene does: Import."""
    scene = scene if scene is not None else slicer.vtkMRMLScene()
    scene.SetURL(str(path))
    assert scene.Import() == 1
    return scene


# --------------------------------------------------------------------------- the node and the file


def test_the_state_is_saved_with_the_scene_and_read_back(tmp_path):
    path = saved_scene(tmp_path, CHOSEN)
    assert "ProjectFolder /data/kidney project/&lt;ct&gt;&amp;&quot;2&quot; é" in path.read_text(encoding="utf-8")
    # into a new scene, and into a scene whose panel already has a node of other values (the
    # singleton node is kept and takes the file's values)
    state, warnings = panelstate.read(parameter_node(imported(path)))
    assert (state, warnings) == (CHOSEN, [])
    scene = slicer.vtkMRMLScene()
    before = parameter_node(scene)
    panelstate.write(before, PanelState(project="/other", backbone="vit_h"))
    imported(path, scene)
    assert parameter_node(scene) is before
    assert panelstate.read(before) == (CHOSEN, [])


def test_values_are_encoded_as_plain_strings():
    node = slicer.vtkMRMLScriptedModuleNode()
    panelstate.write(node, CHOSEN)
    assert node.GetParameter("SFRPlus") == "false" and node.GetParameter("ShowConfidence") == "false"
    assert node.GetParameter("ConfidenceThreshold") == "0.735" and node.GetParameter("Device") == "cuda:1"
    assert node.GetParameter(panelstate.VERSION_PARAMETER) == panelstate.VERSION


def test_damaged_and_unknown_values_fall_back_to_the_defaults_with_one_warning_each(tmp_path):
    """A hand-edited file, or one a newer or older version wrote: every bad value is named once,
    the others are kept, and nothing raises."""
    path = saved_scene(tmp_path, CHOSEN)
    text = path.read_text(encoding="utf-8")
    for old, new in (("Backbone vit_b", "Backbone sam3_giant"), ("SSLMethod ua_mt", "SSLMethod "),
                     ("SFRPlus false", "SFRPlus yes"), ("Device cuda:1", "Device tpu:0"),
                     ("ConfidenceThreshold 0.735", "ConfidenceThreshold nan"),
                     ("OverlayOpacity 0.25", "OverlayOpacity 1.5e3"), ("ShowConfidence false", "ShowConfidence 0")):
        assert old in text
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")
    state, warnings = panelstate.read(parameter_node(imported(path)))
    defaults = PanelState()
    assert state == dataclasses.replace(CHOSEN, backbone=defaults.backbone, ssl=defaults.ssl, sfr_plus=True,
                                        device="auto", confidence_threshold=0.9, overlay_opacity=0.6,
                                        show_confidence=True)
    assert len(warnings) == 7 and all("\n" not in line for line in warnings)
    named = {line.split()[2] for line in warnings}  # "the scene's NAME 'value' is not ..."
    assert named == {"Backbone", "SSLMethod", "SFRPlus", "Device", "ConfidenceThreshold", "OverlayOpacity",
                     "ShowConfidence"}
    assert any("'sam3_giant' is not one of lite_medsam" in line and "uses 'lite_medsam'" in line for line in warnings)


def test_an_empty_node_gives_the_defaults_and_the_remembered_project():
    node = slicer.vtkMRMLScriptedModuleNode()
    remembered = PanelState(project="/remembered")
    assert panelstate.read(node, remembered) == (remembered, [])
    assert panelstate.read(None) == (PanelState(), [])
    node.SetParameter("ProjectFolder", "")  # nothing chosen: the folder Slicer remembers
    node.SetParameter("ResultsRun", "")
    assert panelstate.read(node, remembered) == (remembered, [])


def test_a_closed_scene_leaves_an_empty_node_and_parameters_of_another_version_are_kept():
    scene = slicer.vtkMRMLScene()
    node = parameter_node(scene)
    node.SetParameter("TimeLimitMinutes", "30")  # a setting of a later version
    panelstate.write(node, CHOSEN)
    assert node.GetParameter("TimeLimitMinutes") == "30"
    scene.Clear(0)  # Slicer's Close Scene: the singleton node stays, emptied
    assert parameter_node(scene) is node and node.GetParameterCount() == 0


def test_the_defaults_and_ranges_are_the_ui_files():
    widgets = {w.get("name"): w for w in ET.parse(REPO / "SFRSegmenter" / "Resources" / "UI" / "SFRSegmenter.ui")
               .getroot().iter("widget")}
    classes = {"path": "ctkPathLineEdit", "combo": "QComboBox", "check": "QCheckBox", "slider": "ctkSliderWidget"}

    def prop(name, key):
        return widgets[name].find(f"property[@name='{key}']/*").text

    defaults = PanelState()
    for field, (_parameter, name, kind) in panelstate.FIELDS.items():
        assert widgets[name].get("class") == classes[kind], name
        if kind == "check":
            assert prop(name, "checked") == str(getattr(defaults, field)).lower(), name
        elif kind == "slider":
            assert float(prop(name, "value")) == getattr(defaults, field), name
            assert (float(prop(name, "minimum")), float(prop(name, "maximum"))) == panelstate.RANGES[field], name
    assert set(panelstate.FIELDS) == {f.name for f in dataclasses.fields(PanelState)}


def test_run_takes_the_settings_shown_and_a_checkpoint_only_where_the_backbone_takes_one():
    shown = PanelState(backbone="vit_b", checkpoint="/ckpt/sam b.pth", ssl="ua_mt", sfr_plus=False, device="cuda:1")
    settings = shown.run_settings()
    assert (settings.backbone, settings.checkpoint, settings.ssl, settings.sfr_plus, settings.device) == \
        ("vit_b", "/ckpt/sam b.pth", "ua_mt", False, "cuda:1")
    bundled = dataclasses.replace(shown, backbone="lite_medsam", device="").run_settings()
    assert bundled.checkpoint == "" and bundled.device == "auto"  # LiteMedSAM's weights come with its package


# --------------------------------------------------------------------------- the widget's wiring


class Emitter:
    """Records ``connect(signal, slot)`` and calls the slots when the value changes, as Qt does."""

    def __init__(self):
        self.slots = {}

    def connect(self, signal, slot):
        self.slots.setdefault(signal, []).append(slot)

    def emit(self, signal, *args):
        for slot in self.slots.get(signal, []):
            slot(*args)


class Valued(Emitter):
    """A stand-in with one value property that emits ``SIGNAL`` when it changes, as Qt's do."""

    SIGNAL = ""

    def __init__(self, value):
        super().__init__()
        self._value = value

    def _get(self):
        return self._value

    def _set(self, value):
        if value != self._value:
            self._value = value
            self.emit(self.SIGNAL, value)


class PathEdit(Valued):
    SIGNAL = "currentPathChanged(QString)"
    currentPath = property(Valued._get, Valued._set)

    def __init__(self, path=""):
        super().__init__(path)


class CheckBox(Valued):
    SIGNAL = "toggled(bool)"
    checked = property(Valued._get, Valued._set)


class Slider(Valued):
    SIGNAL = "valueChanged(double)"
    value = property(Valued._get, Valued._set)


class MenuCombo(Emitter, Combo):
    def __init__(self, values=()):
        Emitter.__init__(self)
        Combo.__init__(self)
        for value in values:
            Combo.addItem(self, value, value)

    def setCurrentIndex(self, index):
        if index != self.index:
            Combo.setCurrentIndex(self, index)
            self.emit("currentIndexChanged(int)", index)


def panel_widgets(log):
    return Thing(
        projectPathLineEdit=PathEdit(), checkpointPathLineEdit=PathEdit(),
        backboneComboBox=MenuCombo(["lite_medsam", "vit_b", "vit_h"]), sslComboBox=MenuCombo(["mean_teacher", "ua_mt"]),
        deviceComboBox=MenuCombo(["auto", "cpu"]), resultsRunComboBox=MenuCombo(["run-0003", "run-0002"]),
        sfrPlusCheckBox=CheckBox(True), showConfidenceCheckBox=CheckBox(True),
        confidenceThresholdSliderWidget=Slider(0.9), overlayOpacitySliderWidget=Slider(0.6),
        logTextEdit=Thing(appendPlainText=log.append))


def wired_panel(loaded):
    widget = loaded.SFRSegmenterWidget()
    widget.logic = loaded.SFRSegmenterLogic()
    widget.logic.rememberedProjectFolder = lambda: "/remembered"  # Slicer's QSettings
    log = []
    widget.ui = panel_widgets(log)
    widget._connectPanelState()
    return widget, log


def modified_events(node):
    count = []
    node.AddObserver("ModifiedEvent", lambda _caller, _event: count.append(1))
    return count


def test_the_widget_writes_each_change_into_the_node_and_shows_a_loaded_scene(module, tmp_path):
    loaded, _ = module
    widget, log = wired_panel(loaded)
    node = widget.logic.getParameterNode()
    assert node.GetSingletonTag() == MODULE and node.GetParameterCount() == 0
    widget.ui.sfrPlusCheckBox.checked = False  # before the node is read: nothing is written
    assert node.GetParameterCount() == 0
    widget._showPanelState()  # setup / enter: an empty node, the defaults and the remembered folder
    assert widget.ui.projectPathLineEdit.currentPath == "/remembered" and widget.ui.sfrPlusCheckBox.checked
    assert panelstate.read(node) == (panelstate.from_widgets(widget.ui), [])

    # the user's changes go into the node as they are made; the scene is saved
    widget.ui.projectPathLineEdit.currentPath = CHOSEN.project
    widget.ui.backboneComboBox.setCurrentIndex(1)
    widget.ui.checkpointPathLineEdit.currentPath = CHOSEN.checkpoint
    widget.ui.sslComboBox.setCurrentIndex(1)
    widget.ui.sfrPlusCheckBox.checked = False
    widget.ui.deviceComboBox.setCurrentIndex(1)
    widget.ui.showConfidenceCheckBox.checked = False
    widget.ui.confidenceThresholdSliderWidget.value = 0.735
    widget.ui.overlayOpacitySliderWidget.value = 0.25
    saved = dataclasses.replace(CHOSEN, device="cpu")
    assert panelstate.read(node) == (saved, [])
    assert widget.settings() == saved.run_settings()  # Run starts with what the panel shows
    path = tmp_path / "panel.mrml"
    slicer.mrmlScene.SetURL(str(path))
    assert slicer.mrmlScene.Commit() == 1

    # later: other settings, the scene closed (the panel keeps its settings) and the saved one loaded
    widget.ui.backboneComboBox.setCurrentIndex(2)
    widget.ui.projectPathLineEdit.currentPath = "/elsewhere"
    slicer.mrmlScene.Clear(0)
    widget._writePanelState()  # onSceneEndClose
    assert panelstate.read(node)[0].backbone == "vit_h"
    widget.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, widget._showPanelState)  # as setup does
    events = modified_events(node)
    imported(path, slicer.mrmlScene)
    assert panelstate.from_widgets(widget.ui) == saved and panelstate.read(node) == (saved, [])
    assert len(events) <= 2  # the import's copy and the one write back: no write per widget signal
    assert log == []


def test_the_widget_names_what_it_cannot_show_and_the_node_follows_the_panel(module):
    loaded, _ = module
    widget, log = wired_panel(loaded)
    node = widget.logic.getParameterNode()
    panelstate.write(node, CHOSEN)  # a scene from a machine with a second GPU
    node.SetParameter("Backbone", "sam3_giant")  # and a backbone of another version
    node.SetParameter("ResultsRun", "run-0009")  # a run deleted since
    widget._showPanelState()
    assert len(log) == 3 and all(line.startswith("warning: the scene's ") for line in log)
    assert "Backbone 'sam3_giant' is not one of" in log[0]
    assert "Device 'cuda:1' is not in the panel's menu (expand Settings to list the GPUs" in log[1]
    assert "ResultsRun 'run-0009' is not in the panel's menu; the panel shows 'run-0003'" in log[2]
    shown = panelstate.from_widgets(widget.ui)
    assert (shown.backbone, shown.device, shown.results_run, shown.ssl) == ("lite_medsam", "auto", "run-0003", "ua_mt")
    assert panelstate.read(node) == (shown, [])
