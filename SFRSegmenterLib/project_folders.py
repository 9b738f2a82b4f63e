"""The default project layout of the stand-alone stage commands.

Only the commands (``sfr finetune``, ``sfr pseudolabel``, ``sfr retrain``) know these folders; the
stage functions (:func:`SFRSegmenterLib.finetune.finetune`, :func:`SFRSegmenterLib.pseudolabel.pseudolabel`,
:func:`SFRSegmenterLib.retrain.retrain`) take every folder explicitly, and ``sfr run`` passes its
own run folders.  Pure paths: no torch import.
"""

from __future__ import annotations

from pathlib import Path

#: The model metadata stage F writes next to its weights (``finetune.MODEL_META``).
SAM_MODEL_META = "sam-model.json"


def sam_model_dir(project) -> Path:
    """``PROJECT/models/sam``: where ``sfr finetune`` saves and ``sfr pseudolabel`` reads."""
    return Path(project.root) / "models" / "sam"


def pseudo_dir(project) -> Path:
    """``PROJECT/pseudo``: where ``sfr pseudolabel`` writes and ``sfr retrain`` reads."""
    return Path(project.root) / "pseudo"


def vnet_dir(project) -> Path:
    """``PROJECT/models/vnet``: where ``sfr retrain`` saves."""
    return Path(project.root) / "models" / "vnet"


def existing_sam_model(project) -> "Path | None":
    """The project's default SAM model folder when a model was saved there, else None."""
    d = sam_model_dir(project)
    return d if (d / SAM_MODEL_META).exists() else None
