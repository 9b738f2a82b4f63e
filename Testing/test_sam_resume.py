"""Fine-tuning is deterministic on CPU, and resuming (after cancel or kill) equals not stopping."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO
from SFRSegmenterLib.errors import Cancelled
from SFRSegmenterLib.finetune import FinetuneConfig, finetune
from SFRSegmenterLib.manifest import init_project


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def project(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("resume") / "proj"
    return init_project(root, sample_dir / "images", sample_dir / "labels", labeled=2, validation=2)


def _cfg(**kw):
    base = dict(backbone="tiny_test", iterations=6, save_every=2, device="cpu", batch_size=2)
    base.update(kw)
    return FinetuneConfig(**base)


def _parts(d):
    return torch.load(d / "sam_parts.pt", weights_only=True)


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)



def test_the_embedding_cache_computes_only_the_mosaics_drawn_and_resumes_equal(project, tmp_path):
    """A 4-iteration run with a 16-mosaic cache encodes only the mosaics its batches draw (before:
    all 16); cancelled after 2 iterations and resumed, it encodes those the last 2 draw and ends
    with the uninterrupted run's model (every mosaic comes from its own seed)."""
    from SFRSegmenterLib import events
    from SFRSegmenterLib.finetune import cache_picks, drawn_entries

    cfg = _cfg(iterations=4, embedding_cache=16, lora_rank=0, save_every=100)
    assert drawn_entries(cfg) == sorted({int(j) for it in range(4) for j in cache_picks(cfg, it)})
    assert 0 < len(drawn_entries(cfg)) <= 8 and drawn_entries(cfg, 2) == sorted(
        {int(j) for it in (2, 3) for j in cache_picks(cfg, it)})
    seen = []
    events.add_sink(seen.append)
    try:
        full = finetune(project, cfg, out_dir=tmp_path / "full")
        calls = {"n": 0}

        def stop_after_two():
            calls["n"] += 1
            return calls["n"] > 2

        with pytest.raises(Cancelled):
            finetune(project, cfg, out_dir=tmp_path / "part", should_stop=stop_after_two)
        resumed = finetune(project, cfg, out_dir=tmp_path / "part", resume=True)
    finally:
        events.remove_sink(seen.append)
    totals = [e["total"] for e in seen if e["event"] == "progress" and e["stage"] == "embed" and e["step"] == 1]
    assert totals == [len(drawn_entries(cfg)), len(drawn_entries(cfg)), len(drawn_entries(cfg, 2))]
    assert _same(_parts(full), _parts(resumed))

def test_resume_after_cancel_equals_uninterrupted(project, tmp_path):
    full = finetune(project, _cfg(), out_dir=tmp_path / "full")
    calls = {"n": 0}

    def stop_after_three():
        calls["n"] += 1
        return calls["n"] > 3  # polled before iterations 0, 1, 2, then 3 -> stop

    with pytest.raises(Cancelled):
        finetune(project, _cfg(), out_dir=tmp_path / "part", should_stop=stop_after_three)
    meta = json.loads((tmp_path / "part/sam-model.json").read_text())
    assert meta["iterations_done"] == 3  # saved on cancel, between regular saves
    resumed = finetune(project, _cfg(), out_dir=tmp_path / "part", resume=True)
    assert _same(_parts(full), _parts(resumed))
    m_full = json.loads((full / "sam-model.json").read_text())
    m_res = json.loads((resumed / "sam-model.json").read_text())
    assert m_full["loss_curve"] == m_res["loss_curve"] and m_full["model_id"] == m_res["model_id"]

    other = finetune(project, _cfg(seed=7), out_dir=tmp_path / "seed7")
    assert not _same(_parts(full), _parts(other)), "the seed must matter"


def test_resume_refuses_other_settings(project, tmp_path):
    from SFRSegmenterLib.errors import SFRError

    finetune(project, _cfg(iterations=2), out_dir=tmp_path / "m")
    with pytest.raises(SFRError, match="lr"):
        finetune(project, _cfg(iterations=2, lr=5e-4), out_dir=tmp_path / "m", resume=True)


def test_resume_after_kill_equals_uninterrupted(project, tmp_path):
    """A real ``sfr finetune`` process killed with SIGKILL continues with ``--resume``."""
    args = ["finetune", str(project.root), "--tiny-test", "--iterations", "16", "--save-every", "1",
            "--device", "cpu", "--threads", "1"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "SFRSegmenterLib"]
    killed = subprocess.Popen(cmd + args + ["--out", str(tmp_path / "killed")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meta_path = tmp_path / "killed/sam-model.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if meta_path.exists() and json.loads(meta_path.read_text())["iterations_done"] >= 2:
            break
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    done = json.loads(meta_path.read_text())["iterations_done"]
    assert killed.returncode == -signal.SIGKILL and done < 16, "the run must have been killed mid-way"
    subprocess.run(cmd + args + ["--out", str(tmp_path / "killed"), "--resume"], env=env, check=True,
                   capture_output=True)
    full = finetune(project, _cfg(iterations=16, save_every=1, threads=1), out_dir=tmp_path / "full")
    assert _same(_parts(tmp_path / "killed"), _parts(full))


def test_resume_after_a_kill_in_the_middle_of_a_save(project, tmp_path):
    """The files a kill leaves when it lands after the new parts and state were written but before
    the metadata: the metadata still describes the previous save, kept as *.prev."""
    import shutil

    full = finetune(project, _cfg(), out_dir=tmp_path / "full")
    part = tmp_path / "part"
    n = {"i": 0}

    def stop():
        n["i"] += 1
        return n["i"] > 4  # polled before iterations 0..3, then 4 -> stop (saved at 4)

    with pytest.raises(Cancelled):
        finetune(project, _cfg(), out_dir=part, should_stop=stop)
    assert json.loads((part / "sam-model.json").read_text())["iterations_done"] == 4
    assert not list(part.glob("*.prev"))  # a finished save leaves no backup
    # the crash state: previous files in *.prev, newer (here: perturbed) parts and state in place
    for name in ("sam_parts.pt", "train_state.pt"):
        shutil.copy(part / name, part / f"{name}.prev")
    newer = {k: v + 1 if v.is_floating_point() else v for k, v in _parts(part).items()}
    torch.save(newer, part / "sam_parts.pt")
    state = torch.load(part / "train_state.pt", weights_only=True)
    state["iteration"] = 5
    torch.save(state, part / "train_state.pt")
    resumed = finetune(project, _cfg(), out_dir=part, resume=True)
    assert _same(_parts(full), _parts(resumed))
    assert not list(part.glob("*.prev"))
