"""Re-training: the V-Net, one step per SSL method on real volumes, EMA, resume, cancel, DDP."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from retrain_testutil import make_project, make_pseudo
from SFRSegmenterLib.errors import Cancelled, SFRError
from SFRSegmenterLib.retrain import RetrainConfig, retrain
from SFRSegmenterLib.retrain.networks import build_network, count_parameters
from SFRSegmenterLib.retrain.ssl import SSL_METHODS, ema_update, sigmoid_rampup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(crop=(32, 32, 32), device="cpu", threads=1, save_every=0)


def _state(out_dir):
    return torch.load(out_dir / "model.pt", map_location="cpu", weights_only=True)["state_dict"]


def test_vnet_has_the_papers_parameter_count():
    vnet = build_network("vnet", 1, 2)
    n = count_parameters(vnet)
    print(f"V-Net parameters: {n:,}")
    assert n == 9_448_866  # "about 9.45 M" in the paper
    unet = build_network("unet3d", 1, 3)
    x = torch.zeros(1, 1, 16, 32, 48)
    assert unet.eval()(x).shape == (1, 3, 16, 32, 48)
    assert vnet.eval()(x).shape == (1, 2, 16, 32, 48)


def test_vnet_stages_are_residual():
    vnet = build_network("vnet", 1, 2)
    assert all(s.residual for s in list(vnet.enc)[1:]) and all(s.residual for s in vnet.dec)


def test_ema_update_matches_formula():
    torch.manual_seed(0)
    student = torch.nn.Linear(3, 2)
    teacher = torch.nn.Linear(3, 2)
    t0 = [p.detach().clone() for p in teacher.parameters()]
    s0 = [p.detach().clone() for p in student.parameters()]
    assert ema_update(teacher, student, 0.99, 0) == 0.0  # first step copies the student
    for t, s in zip(teacher.parameters(), s0):
        assert torch.equal(t, s)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    t1 = [p.detach().clone() for p in teacher.parameters()]
    alpha = ema_update(teacher, student, 0.99, 9)  # min(1 - 1/10, 0.99) = 0.9
    assert alpha == pytest.approx(0.9)
    for t, before, s in zip(teacher.parameters(), t1, student.parameters()):
        assert torch.allclose(t, 0.9 * before + 0.1 * s)
    alpha = ema_update(teacher, student, 0.99, 5000)
    assert alpha == pytest.approx(0.99)
    assert not torch.equal(t0[0], list(teacher.parameters())[0])


def test_sigmoid_rampup():
    assert sigmoid_rampup(0, 40) == pytest.approx(np.exp(-5))
    assert sigmoid_rampup(40, 40) == 1.0 and sigmoid_rampup(400, 40) == 1.0
    assert sigmoid_rampup(10, 40) < sigmoid_rampup(20, 40)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    p = make_project(tmp_path_factory.mktemp("rt") / "hippo")
    make_pseudo(p)
    return p


@pytest.mark.parametrize("ssl", sorted(SSL_METHODS))
@pytest.mark.parametrize("use_sam", [False, True])
def test_one_training_step_per_method(project, tmp_path, ssl, use_sam):
    cfg = RetrainConfig(ssl=ssl, use_sam=use_sam, iterations=1, ua_passes=2, **dict(SMALL, crop=(16, 32, 32)))
    torch.manual_seed(cfg.seed)
    init = {k: v.clone() for k, v in build_network("vnet", 1, 2).state_dict().items()}
    out = retrain(project, cfg, pseudo_dir=project.root / "pseudo", out_dir=tmp_path / "m")
    state = _state(out)
    changed = [k for k in init if k.endswith("weight") and not torch.equal(init[k], state[k])]
    assert len(changed) > 10  # the step moved the network
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_sam_weight_changes_training(project, tmp_path):
    a = _state(retrain(project, RetrainConfig(ssl="supervised", use_sam=True, sam_weight=1.0, iterations=1, **SMALL), pseudo_dir=project.root / "pseudo", out_dir=tmp_path / "a"))
    b = _state(retrain(project, RetrainConfig(ssl="supervised", use_sam=True, sam_weight=0.0, iterations=1, **SMALL), pseudo_dir=project.root / "pseudo", out_dir=tmp_path / "b"))
    c = _state(retrain(project, RetrainConfig(ssl="supervised", use_sam=True, sam_weight=0.0, iterations=1, **SMALL), pseudo_dir=project.root / "pseudo", out_dir=tmp_path / "c"))
    assert not torch.equal(a["out.weight"], b["out.weight"])
    assert torch.equal(b["out.weight"], c["out.weight"])  # deterministic on CPU


def test_unlabeled_cases_restricts_pseudo_labels(project, tmp_path):
    one = project.by_role("unlabeled")[0].name
    (project.root / "pseudo" / "moved").mkdir(exist_ok=True)
    other = project.by_role("unlabeled")[1].name
    src = project.root / "pseudo" / f"{other}.nii.gz"
    src.rename(project.root / "pseudo" / "moved" / src.name)
    try:
        with pytest.raises(SFRError, match=other):
            retrain(project, RetrainConfig(ssl="supervised", iterations=1, **SMALL), pseudo_dir=project.root / "pseudo", out_dir=tmp_path / "x")
        out = retrain(project, RetrainConfig(ssl="supervised", iterations=1, **SMALL), pseudo_dir=project.root / "pseudo", out_dir=tmp_path / "y",
                      unlabeled_cases=[one])
        meta = torch.load(out / "model.pt", weights_only=True)
        assert meta["unlabeled_cases"] == [one]
    finally:
        (project.root / "pseudo" / "moved" / src.name).rename(src)


def test_resume_equals_uninterrupted_and_cancel_saves(project, tmp_path):
    cfg = RetrainConfig(ssl="mean_teacher", iterations=3, **dict(SMALL, crop=(16, 32, 32)))
    full = _state(retrain(project, cfg, pseudo_dir=project.root / "pseudo", out_dir=tmp_path / "full"))
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 1  # stop before the second iteration

    with pytest.raises(Cancelled):
        retrain(project, cfg, pseudo_dir=project.root / "pseudo", out_dir=tmp_path / "cut", should_stop=stop)
    ck = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert ck["iteration"] == 1 and not (tmp_path / "cut" / "model.pt").exists()
    resumed = _state(retrain(project, cfg, pseudo_dir=project.root / "pseudo", out_dir=tmp_path / "cut", resume=True))
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    with pytest.raises(SFRError, match="different run"):
        retrain(project, RetrainConfig(ssl="supervised", iterations=3, **dict(SMALL, crop=(16, 32, 32))), pseudo_dir=project.root / "pseudo", out_dir=tmp_path / "cut", resume=True)


def _torchrun(nproc, project, out, extra=()):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", SFR_DDP_BACKEND="gloo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "SFRSegmenterLib", "retrain", str(project.root), "--out", str(out), "--device", "cpu",
           "--iterations", "2", "--crop", "32", "32", "32", "--norm", "instancenorm", "--dropout", "0",
           "--threads", "1", "--save-every", "0", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_ddp_two_processes_match_one(project, tmp_path):
    """Same global batch (2 labeled + 2 unlabeled): one process in-process vs two torchrun
    processes (gloo), each taking 1 + 1."""
    _torchrun(2, project, tmp_path / "two")
    opts = dict(SMALL, norm="instancenorm", dropout=0.0)
    one = _state(retrain(project, RetrainConfig(iterations=2, **opts), pseudo_dir=project.root / "pseudo", out_dir=tmp_path / "one"))
    two = _state(tmp_path / "two")
    for k in one:
        assert torch.allclose(one[k], two[k], rtol=1e-4, atol=1e-6), k
    # the comparison is not vacuous: half the global batch gives other weights
    half = _state(retrain(project, RetrainConfig(iterations=2, labeled_bs=1, unlabeled_bs=1, **opts), pseudo_dir=project.root / "pseudo", out_dir=tmp_path / "half"))
    assert not torch.allclose(one["out.weight"], half["out.weight"], rtol=1e-4, atol=1e-6)


def test_lr_step_is_the_papers_2500_not_scaled(project, tmp_path):
    from SFRSegmenterLib import events

    assert RetrainConfig(iterations=400).resolved_lr_step() == 2500
    assert RetrainConfig(iterations=6000).resolved_lr_step() == 2500

    def last_lr(**kw):  # the lr of the last iteration (its progress event is always sent)
        seen = []

        def sink(e):
            if e.get("stage") == "retrain" and "lr" in e:
                seen.append(e["lr"])

        events.add_sink(sink)
        try:
            retrain(project, RetrainConfig(ssl="supervised", use_sam=False, iterations=3, **kw, **SMALL),
                    out_dir=tmp_path / f"m{len(kw)}")
        finally:
            events.remove_sink(sink)
        return seen[-1]

    assert last_lr(lr_step=2) == pytest.approx(0.001)  # iteration 2 is past one step
    assert last_lr() == pytest.approx(0.01)  # a 3-iteration run never reaches 2500
