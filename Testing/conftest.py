"""Shared test fixtures: the bundled sample cases and a way to run ``sfr`` as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: One math-library thread in this process and in every engine process a test starts (they inherit
#: the environment): the test models are tiny, and on a 2-core machine shared with other work a
#: second OpenMP thread spin-waits for a busy core (a V-Net step measured 8-24 s with 2 threads under
#: load, 1.2-1.6 s with 1).  Set before anything imports torch; a value the caller set wins.
for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "SFRSegmenterLib" / "sample_data" / "hippocampus"
SHARED_DATA = REPO.parent / "shared" / "data"


def run_sfr(*args, cwd=None, check=False, timeout=600, env=None) -> subprocess.CompletedProcess:
    """Run ``python -m SFRSegmenterLib ARGS`` in a real subprocess (this checkout's code)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    if env:
        full_env.update(env)
    proc = subprocess.run(
        [sys.executable, "-m", "SFRSegmenterLib", *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"sfr {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def sample_cases() -> list:
    """Names of the bundled hippocampus cases, sorted."""
    return sorted(p.name[: -len(".nii.gz")] for p in (SAMPLE / "images").glob("*.nii.gz"))


def copy_samples(dest: Path, names) -> tuple:
    """Writable copies of sample cases: ``dest/images`` and ``dest/labels`` (returned)."""
    import shutil

    images, labels = dest / "images", dest / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for name in names:
        shutil.copy(SAMPLE / "images" / f"{name}.nii.gz", images)
        shutil.copy(SAMPLE / "labels" / f"{name}.nii.gz", labels)
    return images, labels


@pytest.fixture
def sfr():
    return run_sfr


@pytest.fixture(scope="session")
def tiny_run_copy(tmp_path_factory):
    """``copy(dest) -> (root, run)``: a copy at ``dest`` of one project with a finished plain
    ``sfr run`` (test_run_pipeline's project and TINY settings: 5 bundled cases, 2 labeled, 1 for
    validation, scans read where they lie).  The run is made once per session, on first use;
    every module that starts from it writes only into its own copy."""
    import shutil

    from test_run_pipeline import TINY, latest, make_project

    master = make_project(tmp_path_factory.mktemp("tiny-run") / "proj", SAMPLE)
    run_sfr("run", master, *TINY, check=True)

    def copy(dest: Path) -> tuple:
        shutil.copytree(master, dest)
        return dest, latest(dest)

    return copy


@pytest.fixture(scope="session")
def safety_run_copy(tmp_path_factory):
    """``copy(dest) -> (root, run)``: the same for test_safety's project (4 bundled cases copied
    into PROJECT/images and PROJECT/labels, 2 labeled) and its TINY settings (no report)."""
    import shutil

    from test_safety import TINY, make_project

    master = make_project(tmp_path_factory.mktemp("safety-run"))
    run_sfr("run", master, *TINY, check=True)

    def copy(dest: Path) -> tuple:
        shutil.copytree(master, dest)
        return dest, dest / "runs" / (dest / "runs" / "latest").read_text().strip()

    return copy


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a 2-core machine: one torch thread avoids oversubscription (10x slower)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def hold_project_lock(folder) -> subprocess.Popen:
    """A real process holding ``folder``'s project lock (as a run started on the command line
    would), returned once it holds it; the caller kills it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from SFRSegmenterLib import jobs
            jobs.ProjectLock({str(folder)!r}, "cli-run").acquire()
            print("held", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True, cwd=str(REPO),
    )
    assert holder.stdout.readline().strip() == "held"
    return holder
