"""The widget's own wiring of the install and the checkpoint download, executed: the module file is
imported with stand-ins for the Qt widgets and dialogs only (slicer-core has no Qt); the tasks are
the real child processes, offline (pip with PIP_NO_INDEX, every proxy on a closed port).  What it
shows: Run stops at the step, the window's timer delivers the lines, Run/Retrain/Apply are
disabled meanwhile, and a failure ends in one dialog naming the step."""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SFRSegmenter"))

slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("slicer-core is not installed", allow_module_level=True)

from SFRSegmenterLib import runcontrol  # noqa: E402
from SFRSegmenterLogicLib import environment, panelrules  # noqa: E402


class Thing:
    """A stand-in widget: any attribute can be set; calls are recorded."""

    def __init__(self, **values):
        self.__dict__.update(values)


class Combo:
    def __init__(self):
        self.items, self.index = [], -1

    def clear(self):
        self.items, self.index = [], -1

    def addItem(self, label, data):
        self.items.append((label, data))
        self.index = max(self.index, 0)

    def findData(self, data):
        return next((i for i, (_, d) in enumerate(self.items) if d == data), -1)

    def setCurrentIndex(self, index):
        self.index = index

    @property
    def currentData(self):
        return self.items[self.index][1] if 0 <= self.index < len(self.items) else None

    @property
    def currentText(self):
        return self.items[self.index][0] if 0 <= self.index < len(self.items) else ""

    @property
    def count(self):
        return len(self.items)


class Timer:
    def __init__(self):
        self.active = False

    def setInterval(self, _ms):
        pass

    def connect(self, _signal, _slot):
        pass

    def start(self):
        self.active = True

    def stop(self):
        self.active = False

    def isActive(self):
        return self.active


class ScriptedLogicBase:
    """Slicer's ``ScriptedLoadableModuleLogic`` as far as the module relies on it
    (Base/Python/slicer/ScriptedLoadableModule.py, 5.10 to the current preview): a cooperative
    ``__init__`` that calls ``super().__init__()`` with no arguments, and ``getParameterNode``,
    the module's singleton ``vtkMRMLScriptedModuleNode`` in ``slicer.mrmlScene``, added when missing."""

    def __init__(self, parent=None):
        super().__init__()
        name = type(self).__name__
        self.moduleName = name[:-len("Logic")] if name.endswith("Logic") else name

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            node = slicer.mrmlScene.AddNode(node)
        return node


@pytest.fixture
def module(monkeypatch, tmp_path):
    """SFRSegmenter.py imported on slicer-core, with Qt and the dialogs stood in for."""
    fake_qt = types.ModuleType("qt")
    fake_qt.QTimer, fake_qt.QComboBox, fake_qt.QSettings = Timer, Combo, Thing
    monkeypatch.setitem(sys.modules, "qt", fake_qt)
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr, i18n.translate = (lambda text: text), (lambda _context, text: text)
    monkeypatch.setitem(sys.modules, "slicer.i18n", i18n)
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleTest"):
        setattr(scripted, name, type(name, (), {"__init__": lambda self, parent=None: None}))
    scripted.ScriptedLoadableModuleLogic = ScriptedLogicBase
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", scripted)
    monkeypatch.setattr(slicer, "app", Thing(temporaryPath=str(tmp_path / "tmp"), defaultScenePath=str(tmp_path)),
                        raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", slicer.vtkMRMLScene(), raising=False)
    dialogs = []
    monkeypatch.setattr(slicer.util, "confirmYesNoDisplay", lambda text, **kw: dialogs.append(("ask", text)) or True)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, **kw: dialogs.append(("ask", text)) or True)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: dialogs.append(("error", text)))
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    (tmp_path / "tmp").mkdir()
    monkeypatch.delitem(sys.modules, "SFRSegmenter", raising=False)
    import importlib.util

    spec = importlib.util.spec_from_file_location("SFRSegmenter", REPO / "SFRSegmenter" / "SFRSegmenter.py")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded, dialogs


def panel(module):
    widget = module.SFRSegmenterWidget()
    widget.logic = module.SFRSegmenterLogic()
    log = []
    widget.ui = Thing(statusLabel=Thing(text=""), logTextEdit=Thing(appendPlainText=log.append),
                      resultsRunComboBox=Combo(), deviceComboBox=Combo(), deviceInfoLabel=Thing(text=""),
                      **{name: Thing(enabled=None) for name in panelrules.BUTTONS})
    widget._versionProblem = None
    widget.timer = Timer()
    return widget, log


def follow(widget, timeout_s=180):
    """What Qt's timer does: call the widget's slot every few ms while it is active."""
    deadline = time.monotonic() + timeout_s
    while widget.timer.isActive() and time.monotonic() < deadline:
        widget._onTimer()
        time.sleep(0.05)
    assert not widget.timer.isActive(), "the task did not end"


def test_a_missing_checkpoint_is_downloaded_in_the_background_and_a_failure_is_one_dialog(module, tmp_path,
                                                                                           monkeypatch):
    loaded, dialogs = module
    monkeypatch.setenv("SFR_CACHE", str(tmp_path / "cache"))
    widget, log = panel(loaded)
    assert widget._checkCheckpoint(runcontrol.RunSettings(backbone="vit_b")) is False  # Run stops here
    assert dialogs[0][0] == "ask" and "sha256" in dialogs[0][1]
    assert widget.timer.isActive() and widget.logic.task.is_active()
    assert not widget.ui.runButton.enabled and not widget.ui.retrainButton.enabled  # busy
    follow(widget)
    kind, text = dialogs[-1]
    assert kind == "error" and text.startswith("Downloading the checkpoint failed: downloading sam_vit_b_01ec64.pth "
                                               "failed: https://dl.fbaipublicfiles.com/")
    assert "could not download it" in text and "--download" not in text
    assert widget.ui.statusLabel.text == text and log[-1] == text and "\n" not in text
    assert widget.ui.runButton.enabled and not (tmp_path / "cache" / "sam_vit_b_01ec64.pth").exists()


def test_the_install_runs_in_the_background_and_names_what_failed(module, monkeypatch):
    loaded, dialogs = module
    monkeypatch.setattr(environment, "missing_requirements", lambda include_torch=True: ["sfr-no-such-package==1.0"])
    widget, log = panel(loaded)
    assert widget.ensureDependencies() is False and widget.logic.task.is_active()
    assert not widget.ui.applyModelButton.enabled
    follow(widget)
    kind, text = dialogs[-1]
    assert kind == "error" and text.startswith("Installing the dependencies failed: installing "
                                               "sfr-no-such-package==1.0 failed: ")
    assert "sfr-no-such-package" in text.split("failed: ")[-1] and "Traceback" not in "\n".join(log)
    assert any(line.startswith("installing sfr-no-such-package==1.0: ") for line in log)  # the command, logged


def test_the_logic_builds_on_slicers_cooperative_base_class(module):
    """Slicer's ScriptedLoadableModuleLogic.__init__ calls super().__init__() with no arguments: a
    base class after it in the logic's bases that needs arguments made the logic fail to build."""
    loaded, _ = module
    logic = loaded.SFRSegmenterLogic()
    assert logic.scene is slicer.mrmlScene and logic.moduleName == "SFRSegmenter"
    assert logic.getParameterNode().GetSingletonTag() == "SFRSegmenter"


def test_reload_forgets_the_logic_packages_before_slicer_reloads_the_module(module, monkeypatch):
    """The widget's own onReload: the packages are gone from sys.modules when Slicer's reload
    (the base class's onReload, here a stand-in that records) re-executes the module file."""
    from SFRSegmenterLogicLib import reloading

    loaded, _ = module
    probe = types.ModuleType("sfr_reload_probe.logic")
    monkeypatch.setitem(sys.modules, "sfr_reload_probe.logic", probe)
    monkeypatch.setattr(reloading, "PACKAGES", ("sfr_reload_probe",))
    seen = []
    monkeypatch.setattr(loaded.ScriptedLoadableModuleWidget, "onReload",
                        lambda self: seen.append("sfr_reload_probe.logic" in sys.modules), raising=False)
    loaded.SFRSegmenterWidget.onReload(loaded.SFRSegmenterWidget.__new__(loaded.SFRSegmenterWidget))
    assert seen == [False]
