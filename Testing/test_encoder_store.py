"""A frozen SAM encoder runs once per image: its window embeddings are stored per case and reused
by later SFR+ rounds and by a warm start, with labels identical to computing them again."""

from __future__ import annotations

import json
import os
import shutil
import statistics

import numpy as np
import pytest

from SFRSegmenterLib import encoder_store
from SFRSegmenterLib.encoder_store import EncoderStore, is_case_file
from SFRSegmenterLib.finetune import FinetuneConfig, finetune
from SFRSegmenterLib.io import read_image
from SFRSegmenterLib.manifest import init_project
from SFRSegmenterLib.pseudolabel import load_sam_model, pseudolabel

from conftest import run_sfr
from test_run_pipeline import TINY, latest, make_project

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FROZEN = [*TINY, "--sam-option", "lora_rank=0", "--sam-option", "embedding_cache=4"]


def _project(tmp_path, sample_dir):
    root = tmp_path / "proj"
    for sub in ("images", "labels"):
        shutil.copytree(sample_dir / sub, root / sub)
    return init_project(root, root / "images", root / "labels", labeled=2)


def _maps(folder, case):
    return (read_image(folder / f"{case}.nii.gz").array, read_image(folder / f"{case}_confidence.nii.gz").array)


def test_stored_embeddings_give_the_same_labels(tmp_path, sample_dir, monkeypatch):
    project = _project(tmp_path, sample_dir)
    model_dir = finetune(project, FinetuneConfig(backbone="tiny_test", iterations=1, device="cpu", crop=(16, 16, 16),
                                                 lora_rank=0), out_dir=tmp_path / "sam")
    cases = [c.name for c in project.by_role("unlabeled")][:2]
    store = tmp_path / "emb"
    first = pseudolabel(project, model_dir, tmp_path / "p1", cases=cases, device="cpu", embeddings_dir=store)
    again = pseudolabel(project, model_dir, tmp_path / "p2", cases=cases, device="cpu", embeddings_dir=store)
    plain = pseudolabel(project, model_dir, tmp_path / "p3", cases=cases, device="cpu")
    for c in cases:
        windows = first[c]["embeddings"]["computed"]
        assert windows > 0 and first[c]["embeddings"]["reused"] == 0
        assert again[c]["embeddings"] == {"file": first[c]["embeddings"]["file"], "reused": windows, "computed": 0}
        assert "embeddings" not in plain[c]
        for a, b, p in zip(_maps(tmp_path / "p1", c), _maps(tmp_path / "p2", c), _maps(tmp_path / "p3", c)):
            assert np.array_equal(a, b) and np.array_equal(a, p)
    assert sorted(p.name for p in store.iterdir()) == sorted(first[c]["embeddings"]["file"] for c in cases)
    assert all(is_case_file(first[c]["embeddings"]["file"], c) for c in cases)

    # a damaged file costs one recomputation (and is rewritten), never a wrong label
    damaged = store / first[cases[0]]["embeddings"]["file"]
    damaged.write_bytes(b"not a torch file")
    redo = pseudolabel(project, model_dir, tmp_path / "p4", cases=cases[:1], device="cpu", embeddings_dir=store)
    assert redo[cases[0]]["embeddings"]["reused"] == 0 and redo[cases[0]]["embeddings"]["computed"] > 0
    assert np.array_equal(_maps(tmp_path / "p4", cases[0])[1], _maps(tmp_path / "p1", cases[0])[1])
    model = load_sam_model(model_dir)
    assert len(EncoderStore(store, model).load(damaged.name)) == redo[cases[0]]["embeddings"]["computed"]

    # a full store stores no more (the labels are the same; later rounds encode again)
    monkeypatch.setattr(encoder_store, "MAX_BYTES", sum(p.stat().st_size for p in store.iterdir()))
    more = [c.name for c in project.by_role("unlabeled")][2:3]
    full = pseudolabel(project, model_dir, tmp_path / "p5", cases=more, device="cpu", embeddings_dir=store)
    assert full[more[0]]["embeddings"]["computed"] > 0 and len(list(store.iterdir())) == len(cases)


def test_a_lora_encoder_is_never_stored(tmp_path, sample_dir):
    project = _project(tmp_path, sample_dir)
    model_dir = finetune(project, FinetuneConfig(backbone="tiny_test", iterations=1, device="cpu", crop=(16, 16, 16),
                                                 lora_rank=2), out_dir=tmp_path / "sam")
    case = project.by_role("unlabeled")[0].name
    rec = pseudolabel(project, model_dir, tmp_path / "p", cases=[case], device="cpu", embeddings_dir=tmp_path / "emb")
    assert "embeddings" not in rec[case] and not (tmp_path / "emb").exists()
    with pytest.raises(ValueError, match="frozen"):
        EncoderStore(tmp_path / "emb", load_sam_model(model_dir))


def _pseudo_records(run, r):
    return json.loads((run / "stages" / f"pseudolabel-r{r}" / "pseudo-labels.json").read_text())["cases"]


def test_sfr_plus_rounds_and_a_warm_start_reuse_the_encoder(tmp_path, sample_dir):
    """Through ``sfr run`` as a user runs it: round 1 of SFR+ and a warm start decode the stored
    embeddings of round 0 (hard links across runs), the encoder runs for no window."""
    root = make_project(tmp_path / "proj", sample_dir)
    run_sfr("run", root, *FROZEN, check=True)
    first = latest(root)
    r0 = _pseudo_records(first, 0)
    assert all(rec["embeddings"]["computed"] > 0 and rec["embeddings"]["reused"] == 0 for rec in r0.values())
    stored = {c: rec["embeddings"]["file"] for c, rec in r0.items()}
    assert sorted(p.name for p in (first / "embeddings").iterdir()) == sorted(stored.values())

    tau = statistics.median(c["confidence"] for c in json.loads((first / "review.json").read_text())["cases"])
    run_sfr("run", root, *FROZEN, "--sfr-plus", "--rounds", "1", "--tau", repr(tau), "--min-structure", "0",
            "--trust", "confidence", check=True)
    plus = latest(root)
    r1 = _pseudo_records(plus, 1)
    assert r1, "round 1 pseudo-labelled no case"
    for c, rec in r1.items():  # the round-1 SAM model keeps round 0's windows: nothing to encode
        assert rec["embeddings"] == {"file": stored[c], "reused": r0[c]["embeddings"]["computed"], "computed": 0}
        assert os.path.samefile(plus / "embeddings" / stored[c], first / "embeddings" / stored[c])

    run_sfr("run", root, *FROZEN, "--warm-start", first.name, check=True)
    warm = latest(root)
    assert json.loads((warm / "config.json").read_text())["warm_start_from"] == first.name
    for c, rec in _pseudo_records(warm, 0).items():
        assert rec["embeddings"]["computed"] == 0 and rec["embeddings"]["file"] == stored[c]
    for later in (plus, warm):  # and neither timed its steps again: the first run's step times reused
        est = next(e for e in map(json.loads, (later / "events.jsonl").read_text().splitlines()) if e["event"] == "estimate")
        assert est["calibration_reused"] == ["sam", "vnet"], est
