"""Budgets: the settings a run trains with, chosen once at run creation for the device and the data.

``--budget`` (:data:`BUDGETS`) names one of:

* ``paper``: the paper's schedule (stage F's and stage R's own defaults: 6000 SAM iterations
  with LoRA, 6000 V-Net iterations, 16 base filters);
* ``fast``: the schedule measured to finish on a CPU (what ``sfr demo`` runs): LiteMedSAM with a
  frozen encoder trained on cached embeddings, 300 SAM + 400 V-Net iterations, a slim V-Net,
  no window overlap when pseudo-labeling (measurements: bench/results/demo_quality*.md); the
  embedding cache grows with the number of labeled cases;
* ``auto`` (the default): ``paper`` on a CUDA GPU with enough memory, ``fast`` elsewhere.

:func:`choose` is a pure function of a device description (:func:`describe_device`: a dict)
and a project description (:func:`describe_project`): the tests feed it fake devices.  The
choice is saved in ``config.json`` as ``budget_choice`` (the budget, why, the concrete
settings, what the command line overrode); :func:`effective` merges it under the options the
user gave, which always win.
"""

from __future__ import annotations

import copy
import dataclasses
import os

from ..errors import SFRError

BUDGETS = ("auto", "fast", "paper")
#: CUDA memory (GiB) from which ``auto`` takes the paper's schedule (a threshold, not a
#: measurement: a smaller GPU gets the CPU schedule, which fits anywhere; an out-of-memory error
#: is retried with a smaller batch anyway, run/job.py)
PAPER_MIN_GPU_GIB = 8.0
#: mosaics in stage F's embedding cache per labeled case (the demo: 64 for 2), and its bounds
CACHE_PER_LABELED, CACHE_MIN, CACHE_MAX = 32, 64, 256

#: The CPU schedule (what ``sfr demo`` runs; its time and Dice: the ``sfr demo`` row of
#: bench/results/README.md).  Stage F: LiteMedSAM with a frozen encoder (LoRA rank 0), the decoder
#: trained on the embeddings of augmented mosaics computed once (64 for the demo's 2 labeled
#: cases; CACHE_PER_LABELED), 300 steps with a linear learning-rate warm-up over the first 50.
#: Pseudo-labels without window overlap.  Stage R: 400 iterations of a slim V-Net (8 base
#: filters) without dropout, since dropout on its 8 output-layer channels erases a class
#: (bench/results/demo_ablation.md, stage R rows).
FAST = {
    "backbone": "lite_medsam",
    "iterations_sam": 300,
    "iterations_vnet": 400,
    "pseudo_overlap": 0.0,
    "sam_options": {"lora_rank": 0, "embedding_cache": 64, "warmup": 50},
    "vnet_options": {"filters": 8, "dropout": 0.0},
}
#: The paper's schedule: the stages' own defaults.
PAPER: dict = {}
PRESETS = {"fast": FAST, "paper": PAPER}
#: RunConfig fields a budget may set (a value the user gave wins).
FIELDS = ("backbone", "iterations_sam", "iterations_vnet", "pseudo_overlap")


def check_budget(name) -> str:
    if name not in BUDGETS:
        raise SFRError(f"unknown budget {name!r} (choose from {', '.join(BUDGETS)})")
    return name


# --------------------------------------------------------------------------- descriptions


def describe_device(device) -> dict:
    """The description :func:`choose` reads: ``{"kind": "cuda"|"mps"|"cpu", ...}``."""
    import torch

    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        return {"kind": "cuda", "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                "count": torch.cuda.device_count()}
    if kind == "mps":
        return {"kind": "mps", "name": "Apple GPU"}
    return {"kind": "cpu", "cores": os.cpu_count() or 1, "threads": torch.get_num_threads()}


def describe_project(project) -> dict:
    """Numbers of cases by role and the mean volume size (voxels, from the image headers)."""
    from ..io.read import read_header

    sizes = []
    for c in project.cases:
        try:
            x, y, z = read_header(project.image_path(c))["size_xyz"]
            sizes.append(int(x) * int(y) * int(z))
        except (SFRError, OSError, KeyError, ValueError, IndexError, TypeError):
            continue
    return {"labeled": len(project.by_role("labeled")), "unlabeled": len(project.by_role("unlabeled")),
            "mean_voxels": int(sum(sizes) / len(sizes)) if sizes else None}


# --------------------------------------------------------------------------- the choice


def _device_text(device: dict) -> str:
    if device.get("kind") == "cuda":
        return f"CUDA GPU {device.get('name', '')} with {device.get('memory_gib', '?')} GiB".replace("  ", " ")
    if device.get("kind") == "mps":
        return "Apple MPS GPU"
    return f"CPU with {device.get('cores', '?')} cores"


def _auto(device: dict) -> tuple:
    kind = device.get("kind")
    if kind == "cuda":
        mem = float(device.get("memory_gib") or 0)
        if mem >= PAPER_MIN_GPU_GIB:
            return "paper", f"auto: {_device_text(device)} affords the paper's schedule"
        return "fast", (f"auto: {_device_text(device)} has less than {PAPER_MIN_GPU_GIB:g} GiB for the "
                        "paper's schedule")
    if kind == "mps":
        return "fast", "auto: Apple MPS runs 3D convolutions slowly; the paper's schedule would take days"
    return "fast", (f"auto: {_device_text(device)}: the paper's schedule would take days "
                    "(6000 LoRA steps); the CPU schedule finishes in minutes")


def preset(name: str, project: dict) -> dict:
    """The concrete settings of budget ``name`` (fast or paper) for a project description."""
    settings = copy.deepcopy(PRESETS[name])
    if name == "fast":
        labeled = int(project.get("labeled") or 2)
        settings["sam_options"]["embedding_cache"] = max(CACHE_MIN, min(CACHE_MAX, CACHE_PER_LABELED * labeled))
    return settings


def choose(budget: str, device: dict, project: dict) -> dict:
    """``{"budget": asked, "name": fast|paper, "why": ..., "settings": {...}, "device": ..., "project": ...}``.

    Pure: the same descriptions give the same choice.
    """
    check_budget(budget)
    if budget == "auto":
        name, why = _auto(device)
    else:
        name, why = budget, f"--budget {budget} asked for, on a {_device_text(device)}"
    settings = preset(name, project)
    if name == "fast" and int(project.get("labeled") or 2) != 2:
        why += f"; embedding cache {settings['sam_options']['embedding_cache']} mosaics for {project.get('labeled')} labeled cases"
    return {"budget": budget, "name": name, "why": why, "settings": settings, "device": dict(device),
            "project": dict(project)}


def overridden(cfg, choice: dict) -> list:
    """The budget's settings that the run's explicit options replace (by option name)."""
    out = []
    settings = choice.get("settings", {})
    for f in FIELDS:
        if f in settings and getattr(cfg, f) is not None:
            out.append("--" + f.replace("_", "-"))
    for flag, field in (("--sam-option", "sam_options"), ("--vnet-option", "vnet_options")):
        for key in settings.get(field, {}):
            if key in getattr(cfg, field):
                out.append(f"{flag} {key}")
    return out


def resolve(cfg, project, device) -> dict:
    """Choose ``cfg.budget`` for ``project`` on ``device`` (a torch.device) and record the choice."""
    choice = choose(cfg.budget, describe_device(device), describe_project(project))
    choice["overridden"] = overridden(cfg, choice)
    cfg.budget_choice = choice
    return choice


def effective(cfg):
    """A copy of ``cfg`` with its budget's settings under the options the user gave."""
    choice = cfg.budget_choice
    if not choice:
        return cfg
    settings = choice.get("settings", {})
    out = dataclasses.replace(cfg, sam_options=dict(cfg.sam_options), vnet_options=dict(cfg.vnet_options))
    for f in FIELDS:
        if getattr(out, f) is None and f in settings:
            setattr(out, f, settings[f])
    for field in ("sam_options", "vnet_options"):
        setattr(out, field, {**settings.get(field, {}), **getattr(cfg, field)})
    return out


def summary(choice: dict) -> str:
    """One log line: the budget, why, and what the command line overrode."""
    if not choice:
        return "budget: none recorded (a run from before budgets): the stages' defaults"
    s = choice.get("settings", {})
    parts = [f"budget {choice['name']}" + (" (auto)" if choice.get("budget") == "auto" else ""),
             choice.get("why", "")]
    if s:
        parts.append("settings " + ", ".join(f"{k}={v}" for k, v in s.items()))
    else:
        parts.append("the paper's schedule (the stages' defaults)")
    if choice.get("overridden"):
        parts.append("overridden by " + ", ".join(choice["overridden"]))
    return "; ".join(p for p in parts if p)
