"""The panel's state in the module's parameter node, on the real MRML core: written into a
``vtkMRMLScriptedModuleNode``, saved in a ``.mrml`` file by the scene's writer and read back into
another scene; damaged or unknown values fall back to the defaults with one warning each; an empty
node gives the defaults."""

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
