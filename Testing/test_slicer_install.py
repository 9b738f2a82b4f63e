"""The panel's install of the engine's packages: child processes of the Slicer Python run one after
another through the panel's runner (the window stays responsive), lines shown as they come, one
message naming what failed.  Real ``pip`` runs, offline (``--no-index`` on a folder of tiny wheels
built here, ``--dry-run``): nothing is downloaded and nothing is installed."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SFRSegmenter"))

from SFRSegmenterLogicLib import environment  # noqa: E402
from SFRSegmenterLogicLib.runner import SubprocessRunner  # noqa: E402
from SFRSegmenterLogicLib.tasks import CommandJob, Step  # noqa: E402


def tiny_wheel(folder: Path, name: str, version: str = "1.0", requires=()) -> Path:
    """A pure-Python wheel of one empty package, with its RECORD."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"",
        f"{dist}/METADATA": ("Metadata-Version: 2.1\nName: " + name + "\nVersion: " + version + "\n"
                             + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: sfr-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


@pytest.fixture
def wheels(tmp_path):
    folder = tmp_path / "wheels"
    tiny_wheel(folder, "sfrtinypkg")
    tiny_wheel(folder, "numpy", "0.1")  # what a careless resolver would put in place of Slicer's numpy
    tiny_wheel(folder, "sfrneedsoldnumpy", requires=["numpy<1"])
    return folder


def offline(wheels: Path) -> tuple:
    return ("--no-index", "--find-links", str(wheels), "--dry-run")


def run_job(job: CommandJob, timeout_s: float = 300):
    shown, ended = [], []
    job.on_line = lambda kind, text: shown.append((kind, text))
    job.on_finished = ended.append
    job.start()
    assert job.wait(timeout_s), "the install job did not end"
    assert ended == [job]
    return shown


def test_install_steps_keep_slicers_packages(tmp_path):
    steps = environment.install_steps(["torch>=2.1", "timm>=0.9", "scipy>=1.9"], "pins.txt", python="PY")
    args = [step.args for step in steps]
    labels = [step.label for step in steps]
    if not environment._have("light_the_torch"):
        assert args.pop(0)[-1] == "light-the-torch>=0.5" and labels.pop(0) == "installing light-the-torch>=0.5"
    torch, no_deps, rest, check = args
    assert torch[:4] == ["PY", "-m", "light_the_torch", "install"] and torch[-2:] == ["torch>=2.1", "torchvision"]
    assert no_deps[:4] == ["PY", "-m", "pip", "install"] and no_deps[-2:] == ["--no-deps", "timm>=0.9"]
    assert rest[-3:] == ["-c", "pins.txt", "scipy>=1.9"] and "--no-deps" not in rest
    assert check == ["PY", "-m", "SFRSegmenterLogicLib.environment", "--check"]
    assert labels[1:] == ["installing timm>=0.9", "installing scipy>=1.9", "checking that the packages import"]
    for step in (no_deps, rest):  # torch, numpy, SimpleITK, vtk are never asked for by pip directly
        assert not any(a.split(">")[0].split("=")[0] in environment.PROTECTED for a in step[4:])
    pins = environment.protected_pins()
    import numpy

    assert f"numpy=={numpy.__version__}" in pins


def test_a_package_installs_through_real_pip_and_the_check(tmp_path, wheels):
    job = environment.install_job(["sfrtinypkg==1.0"], tmp_path / "work", SubprocessRunner, sys.executable,
                                  offline(wheels))
    shown = run_job(job)
    assert job.state == "done" and job.error is None
    assert any(kind == "log" and "Would install sfrtinypkg-1.0" in text for kind, text in shown)
    assert [text for kind, text in shown if kind == "status"] == [
        "Installing the dependencies: step 1 of 2, installing sfrtinypkg==1.0",
        "Installing the dependencies: step 2 of 2, checking that the packages import"]
    assert environment.install_outcome(job, ["sfrtinypkg==1.0"]) == "Installed sfrtinypkg==1.0. Press Run SFR to start."
    assert environment.install_outcome(job, ["torch>=2.1"], loaded_modules={"torch"}).startswith(
        "Installed torch>=2.1. Restart Slicer")


def test_a_failing_requirement_ends_in_one_message_naming_it(tmp_path, wheels):
    job = environment.install_job(["sfr-no-such-package==1.0", "sfrtinypkg==1.0"], tmp_path / "work",
                                  SubprocessRunner, sys.executable, offline(wheels))
    shown = run_job(job)
    assert job.state == "failed" and job.index == 0  # the check after it never ran
    assert job.error.startswith("installing sfr-no-such-package==1.0, sfrtinypkg==1.0 failed: ")
    assert "sfr-no-such-package" in job.error.split("failed: ", 1)[1] and "\n" not in job.error
    assert "Traceback" not in job.error
    outcome = environment.install_outcome(job, ["sfr-no-such-package==1.0"])
    assert outcome == "Installing the dependencies failed: " + job.error
    assert shown[-1] == ("log", "error: " + job.error)


def test_slicers_numpy_is_pinned_against_a_package_that_wants_another(tmp_path, wheels):
    careless = subprocess.run([sys.executable, "-m", "pip", "install", *environment.PIP_OPTIONS, *offline(wheels),
                               "sfrneedsoldnumpy"], capture_output=True, text=True, timeout=300)
    assert "numpy-0.1" in careless.stdout  # without the pins pip would replace Slicer's numpy
    job = environment.install_job(["sfrneedsoldnumpy"], tmp_path / "work", SubprocessRunner, sys.executable,
                                  offline(wheels))
    run_job(job)
    assert job.state == "failed" and "numpy" in job.error and "\n" not in job.error
    constraints = (tmp_path / "work" / environment.CONSTRAINTS_NAME).read_text().split()
    assert constraints == environment.protected_pins()


def test_a_package_that_installs_but_does_not_import_is_named(tmp_path):
    broken = tmp_path / "broken"
    (broken / "scipy").mkdir(parents=True)
    (broken / "scipy" / "__init__.py").write_text("raise ImportError('broken build')\n")
    check = environment.install_steps([], python=sys.executable)[-1]
    check.env["PYTHONPATH"] = str(broken) + ":" + check.env["PYTHONPATH"]
    job = CommandJob([check], SubprocessRunner, what="Installing the dependencies")
    run_job(job)
    assert job.state == "failed"
    assert job.error == ("checking that the packages import failed: installed, but these do not import: "
                         "scipy: ImportError: broken build")


def test_a_step_that_cannot_start_fails_with_one_message(tmp_path):
    job = CommandJob([Step("installing x", [str(tmp_path / "no-python"), "-m", "pip"])], SubprocessRunner)
    run_job(job, 30)
    assert job.state == "failed" and job.error.startswith("installing x failed: could not start ")
