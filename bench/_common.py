"""Helpers shared by the stage-F benchmarks (machine description, LA project preparation)."""

from __future__ import annotations

import os
import platform
import resource
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
LA = REPO.parent / "shared" / "data" / "la"
HIPPOCAMPUS = REPO.parent / "shared" / "data" / "hippocampus"


def machine(threads: int) -> dict:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg_at_start": os.getloadavg()[0],
    }


def pct(v) -> str:
    """A 0-1 value in points with one decimal; '-' for None."""
    return "-" if v is None else f"{100 * v:.1f}"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def prepare_la(root: Path, labeled: int, validation: int = 16):
    """An LA project (train.list order, first N labeled, last 16 validation)."""
    root = Path(root)
    try:  # bench/prep_la.py from the foundation, when this checkout has it
        sys.path.insert(0, str(REPO / "bench"))
        from prep_la import prepare  # type: ignore

        return prepare(root, labeled, validation, LA, force=True)
    except ImportError:
        from SFRSegmenterLib.manifest import init_project

        return init_project(
            root, LA / "images", LA / "labels", cases=LA / "train.list", labeled=labeled,
            validation=validation, classes="background,left_atrium", force=True,
        )
