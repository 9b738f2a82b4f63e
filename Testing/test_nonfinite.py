"""Non-finite values stop training (issue 24, items 5 and 6): with ``lr=1e6`` both stages end with
one line (exit 2, no traceback), the run is marked failed, the last saved checkpoint holds only
finite values, and nothing is published (no model, no review.json with NaN).

Before the fix a diverged V-Net run ended done (exit 0) with NaN in its model and review.json,
and a diverged SAM ended in a traceback (exit 1).  Real ``sfr run`` subprocesses, tiny models.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_sfr
from test_safety import TINY, assert_one_line, make_project


def _finite(state: dict) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values()
               if isinstance(v, torch.Tensor) and v.is_floating_point())


def _run(root, *options):
    args = list(TINY)
    args[args.index("--iterations-vnet") + 1] = "4"
    args[args.index("--iterations-sam") + 1] = "6"
    proc = run_sfr("run", root, *args, *options)
    run = root / "runs" / (root / "runs" / "latest").read_text().strip()
    return proc, run, json.loads((run / "status.json").read_text())


def test_a_diverging_vnet_stops_the_run_with_one_line_and_publishes_nothing(tmp_path):
    root = make_project(tmp_path)
    proc, run, status = _run(root, "--vnet-option", "lr=1e6", "--vnet-option", "save_every=1")
    assert_one_line(proc, "re-training diverged", "last good checkpoint is kept", "--vnet-option lr=")
    assert status["state"] == "failed" and "diverged" in status["error"]
    stage = run / "stages" / "retrain-r0"
    assert not (stage / "model.pt").exists() and not (run / "vnet").exists()
    assert not list(run.rglob("review.json"))  # nothing published, no NaN anywhere
    ckpt = torch.load(stage / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert 1 <= ckpt["iteration"] < 4 and _finite(ckpt["model"])


def test_a_diverging_sam_stops_the_run_with_one_line(tmp_path):
    root = make_project(tmp_path)
    proc, run, status = _run(root, "--sam-option", "lr=1e6", "--sam-option", "save_every=1")
    assert_one_line(proc, "fine-tuning diverged", "--sam-option lr=")
    assert status["state"] == "failed"
    stage = run / "stages" / "finetune-r0"
    meta = json.loads((stage / "sam-model.json").read_text())
    assert meta["iterations_done"] < 6
    assert all(v == v for v in meta["loss_curve"])  # no NaN recorded
    parts = torch.load(stage / "sam_parts.pt", map_location="cpu", weights_only=True)
    assert _finite(parts)
    assert not (run / "stages" / "pseudolabel-r0").exists()
