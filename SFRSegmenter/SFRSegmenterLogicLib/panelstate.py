"""The panel's state in the scene: Slicer's parameter node of the module (a
``vtkMRMLScriptedModuleNode``) holds the project folder, the run settings, the review overlay and
the results run shown, so saving the scene saves the panel and loading it restores it.

The node holds strings (``SetParameter`` / ``GetParameter``): booleans are ``true`` / ``false``,
numbers decimal text.  :func:`read` never raises on what a scene file holds: a missing value takes
the default, and a damaged one, or one that is not a choice of this version (an unknown backbone
from a newer or older version, a device name this version does not know), takes the default and
is named in the warnings it returns.  Parameters this version does not know are left in the node.

:func:`from_widgets` and :func:`to_widgets` read and set the panel's widgets by their names in the
``.ui`` file, through the properties PythonQt gives them (``currentPath``, ``currentData`` /
``findData`` / ``setCurrentIndex``, ``checked``, ``value``); the widget file only calls them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from SFRSegmenterLib import device, runcontrol

#: Written with the state; a later version that changes a parameter's meaning reads it.
VERSION = "1"
VERSION_PARAMETER = "PanelStateVersion"


@dataclass
class PanelState:
    """What the panel shows; the defaults are the ``.ui`` file's and the engine's."""

    project: str = ""
    backbone: str = runcontrol.RunSettings.backbone
    checkpoint: str = ""
    ssl: str = runcontrol.RunSettings.ssl
    sfr_plus: bool = runcontrol.RunSettings.sfr_plus
    device: str = runcontrol.RunSettings.device
    results_run: str = ""
    show_confidence: bool = True
    confidence_threshold: float = 0.9
    overlay_opacity: float = 0.6

    def run_settings(self) -> runcontrol.RunSettings:
        """The settings Run starts the engine with: the checkpoint only for a backbone that takes
        one (``panelrules.takes_checkpoint``; the panel disables the field otherwise)."""
        from .panelrules import takes_checkpoint

        return runcontrol.RunSettings(backbone=self.backbone, ssl=self.ssl, sfr_plus=self.sfr_plus,
                                      checkpoint=self.checkpoint if takes_checkpoint(self.backbone) else "",
                                      device=self.device or "auto")


#: field -> (parameter name in the node, widget name in the .ui file, widget kind); the project
#: first (choosing it fills the results list), the results run last
FIELDS = {
    "project": ("ProjectFolder", "projectPathLineEdit", "path"),
    "backbone": ("Backbone", "backboneComboBox", "combo"),
    "checkpoint": ("Checkpoint", "checkpointPathLineEdit", "path"),
    "ssl": ("SSLMethod", "sslComboBox", "combo"),
    "sfr_plus": ("SFRPlus", "sfrPlusCheckBox", "check"),
    "device": ("Device", "deviceComboBox", "combo"),
    "show_confidence": ("ShowConfidence", "showConfidenceCheckBox", "check"),
    "confidence_threshold": ("ConfidenceThreshold", "confidenceThresholdSliderWidget", "slider"),
    "overlay_opacity": ("OverlayOpacity", "overlayOpacitySliderWidget", "slider"),
    "results_run": ("ResultsRun", "resultsRunComboBox", "combo"),
}
#: the ranges of the .ui file's sliders
RANGES = {"confidence_threshold": (0.5, 1.0), "overlay_opacity": (0.0, 1.0)}
_DEVICE = re.compile(r"(?:%s|cuda:\d+)" % "|".join(device.DEVICES))


def widget_names(kind: str) -> list:
    """The names of the widgets of ``kind`` (``path``, ``combo``, ``check``, ``slider``)."""
    return [name for _parameter, name, widget_kind in FIELDS.values() if widget_kind == kind]


# --------------------------------------------------------------------------- the node


def encode(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _decode(field: str, text: str):
    """The value of ``field`` for ``text``, or ``(None, what it should be)`` when ``text`` is not one."""
    if field in ("backbone", "ssl"):
        choices = runcontrol.USER_BACKBONES if field == "backbone" else runcontrol.SSL_METHODS
        return (text, None) if text in choices else (None, "one of " + ", ".join(choices))
    if field == "device":
        return (text, None) if _DEVICE.fullmatch(text) else (None, "one of " + ", ".join(device.DEVICES) + ", cuda:N")
    if field in ("sfr_plus", "show_confidence"):
        return {"true": (True, None), "false": (False, None)}.get(text, (None, "true or false"))
    if field in RANGES:
        low, high = RANGES[field]
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        return (number, None) if low <= number <= high else (None, f"a number from {low} to {high}")
    return text, None


def read(node, defaults: "PanelState | None" = None) -> tuple:
    """``(PanelState, [warnings])`` from a ``vtkMRMLScriptedModuleNode`` (None: the defaults)."""
    state = PanelState(**vars(defaults)) if defaults is not None else PanelState()
    warnings = []
    if node is None:
        return state, warnings
    for field, (parameter, _widget, _kind) in FIELDS.items():
        if not node.HasParameter(parameter):
            continue
        text = node.GetParameter(parameter)
        if text == "" and field in ("project", "checkpoint", "results_run"):
            continue  # nothing chosen: the default (the project: the folder Slicer remembers)
        value, expected = _decode(field, text)
        if expected is None:
            setattr(state, field, value)
        else:
            warnings.append(f"the scene's {parameter} {text!r} is not {expected}; "
                            f"the panel uses {encode(getattr(state, field))!r}")
    return state, warnings


def write(node, state: PanelState) -> None:
    """Put ``state`` into the node, with one Modified event at most."""
    was_modifying = node.StartModify()
    try:
        node.SetParameter(VERSION_PARAMETER, VERSION)
        for field, (parameter, _widget, _kind) in FIELDS.items():
            node.SetParameter(parameter, encode(getattr(state, field)))
    finally:
        node.EndModify(was_modifying)


# --------------------------------------------------------------------------- the widgets


def from_widgets(ui) -> PanelState:
    """The state the panel's widgets show (``ui``: the widgets by their .ui names)."""
    defaults, values = PanelState(), {}
    for field, (_parameter, name, kind) in FIELDS.items():
        widget = getattr(ui, name)
        if kind == "path":
            values[field] = widget.currentPath or ""
        elif kind == "combo":
            values[field] = widget.currentData or getattr(defaults, field)
        elif kind == "check":
            values[field] = bool(widget.checked)
        else:
            values[field] = float(widget.value)
    return PanelState(**values)


def to_widgets(ui, state: PanelState) -> list:
    """Set the widgets to ``state``; warnings for values a menu does not offer (it keeps its choice)."""
    warnings = []
    for field, (parameter, name, kind) in FIELDS.items():
        widget, value = getattr(ui, name), getattr(state, field)
        if kind == "path":
            if value or field != "project":
                widget.currentPath = value
        elif kind == "combo":
            index = widget.findData(value)
            if index >= 0:
                widget.setCurrentIndex(index)
            elif value:
                hint = " (expand Settings to list the GPUs, then choose it)" if field == "device" else ""
                warnings.append(f"the scene's {parameter} {value!r} is not in the panel's menu{hint}; "
                                f"the panel shows {widget.currentData or 'none'!r}")
        elif kind == "check":
            widget.checked = value
        else:
            widget.value = value
    return warnings


def show(node, ui, remembered_project: str = "") -> list:
    """Set the widgets as the node says (the defaults, and ``remembered_project``, where it says
    nothing), then write the node as the widgets show it; the warnings of both steps."""
    state, warnings = read(node, PanelState(project=remembered_project))
    warnings += to_widgets(ui, state)
    write(node, from_widgets(ui))
    return warnings
