"""Sliding-window inference, predict_folder, model-file checks and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from retrain_testutil import SAMPLE, make_project, make_pseudo
from SFRSegmenterLib.cli import main as cli_main
from SFRSegmenterLib.errors import SFRError
from SFRSegmenterLib.io import Volume, read_image, read_label
from SFRSegmenterLib.retrain import RetrainConfig, load_model, predict_folder, predict_volume, retrain
from SFRSegmenterLib.retrain.data import normalize
from SFRSegmenterLib.retrain.inference import default_stride, window_starts
from SFRSegmenterLib.retrain.networks import build_network
from SFRSegmenterLib.sliding import DEFAULT_OVERLAP, resolve_stride
from SFRSegmenterLib.retrain.train import FORMAT


def _model(num_classes=2, window=(16, 32, 32)):
    torch.manual_seed(0)
    m = build_network("vnet", 1, num_classes).eval()
    m.sfr_meta = {"window": list(window), "normalization": "zscore"}
    return m


def test_window_covering_the_volume_equals_one_forward():
    rng = np.random.default_rng(1)
    arr = rng.normal(size=(16, 32, 48)).astype(np.float32)
    m = _model(window=(16, 32, 48))
    prob = predict_volume(m, Volume(arr), window=(16, 32, 48), stride=(4, 8, 8))
    with torch.no_grad():
        ref = torch.softmax(m(torch.from_numpy(normalize(arr))[None, None]), 1)[0].numpy()
    assert prob.shape == (2, 16, 32, 48)
    assert np.allclose(prob, ref, atol=1e-6)


def test_sliding_window_tiles_pads_and_averages():
    rng = np.random.default_rng(2)
    arr = rng.normal(size=(20, 40, 37)).astype(np.float32)  # larger than the window, not a multiple
    m = _model()
    prob = predict_volume(m, arr, window=(16, 32, 32), stride=(2, 8, 8), batch=3)
    assert prob.shape == (2, 20, 40, 37)
    assert np.allclose(prob.sum(0), 1.0, atol=1e-5)
    small = rng.normal(size=(5, 9, 11)).astype(np.float32)  # smaller than the window: padded
    p2 = predict_volume(m, small, window=(16, 32, 32))
    assert p2.shape == (2, 5, 9, 11) and np.allclose(p2.sum(0), 1.0, atol=1e-5)
    # batch size does not change the result
    assert np.allclose(prob, predict_volume(m, arr, window=(16, 32, 32), stride=(2, 8, 8), batch=1), atol=1e-6)


def test_window_positions_cover_and_default_stride():
    assert window_starts(88, 80, 4) == [0, 4, 8]
    assert window_starts(244, 112, 18)[-1] == 132 and len(window_starts(244, 112, 18)) == 9
    assert window_starts(50, 64, 8) == [0]
    assert resolve_stride((80, 112, 112), "paper") == (4, 18, 18)
    assert default_stride((80, 112, 112)) == resolve_stride((80, 112, 112), None, DEFAULT_OVERLAP)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("inf")
    p = make_project(root / "proj", n_labeled=1, n_unlabeled=1, n_validation=1)
    make_pseudo(p)
    out = retrain(p, RetrainConfig(ssl="supervised", iterations=2, crop=(32, 32, 32), device="cpu", threads=1, save_every=0),
                  out_dir=p.root / "models" / "vnet", pseudo_dir=p.root / "pseudo")
    return p, out


def test_predict_folder_writes_label_and_confidence_in_image_geometry(trained, tmp_path):
    project, model_dir = trained
    assert model_dir == project.root / "models" / "vnet"
    case = project.by_role("validation")[0]
    res = predict_folder(model_dir, [project.image_path(case)], tmp_path / "pred", stride=(8, 16, 16), device="cpu")
    r = res[case.name]
    img = read_image(project.image_path(case))
    lab = read_label(r["label"], reference=img, num_classes=2)
    conf = read_image(r["confidence"])
    assert conf.shape == img.shape and np.allclose(conf.spacing, img.spacing) and np.allclose(conf.origin, img.origin)
    assert lab.array.dtype == np.uint8
    assert 0.5 <= conf.array.min() and conf.array.max() <= 1.0 + 1e-6
    assert r["mean_confidence"] == pytest.approx(float(conf.array.mean()), abs=1e-4)


def test_wrong_model_files(trained, tmp_path):
    project, model_dir = trained
    rec = torch.load(model_dir / "model.pt", weights_only=True)
    # weights of another class count under this header
    bad = dict(rec, state_dict=build_network("vnet", 1, 3).state_dict())
    torch.save(bad, tmp_path / "classes.pt")
    with pytest.raises(SFRError, match="do not fit a vnet with 2 classes") as e:
        load_model(tmp_path / "classes.pt", "cpu")
    assert "classes.pt" in str(e.value)
    # weights of another backbone
    torch.save(dict(rec, state_dict=build_network("unet3d", 1, 2).state_dict()), tmp_path / "unet.pt")
    with pytest.raises(SFRError, match="another backbone"):
        load_model(tmp_path / "unet.pt", "cpu")
    # expectations of the caller
    with pytest.raises(SFRError, match="expected 3"):
        load_model(model_dir, "cpu", num_classes=3)
    with pytest.raises(SFRError, match="'unet3d'"):
        load_model(model_dir, "cpu", network="unet3d")
    # not a model file at all
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(SFRError, match="not an SFR"):
        load_model(tmp_path / "other.pt", "cpu")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(SFRError, match="cannot read"):
        load_model(tmp_path / "junk.pt", "cpu")
    assert rec["format"] == FORMAT and load_model(model_dir, "cpu").sfr_meta["num_classes"] == 2


def test_cli_predict_and_errors(trained, tmp_path, sfr, capsys):
    project, model_dir = trained
    case = project.by_role("validation")[0]
    proc = sfr("predict", "--model", model_dir, "--images", project.image_path(case), "--out", tmp_path / "o",
               "--stride", "16", "32", "32", "--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert (tmp_path / "o" / f"{case.name}.nii.gz").exists() and case.name in res
    # the paper's stride and an overlap, through the real parser: the same labels where windows agree
    for option, value in (("--stride", ["paper"]), ("--overlap", ["0.5"])):
        proc = sfr("predict", "--model", model_dir, "--images", project.image_path(case), "--out", tmp_path / option[2:],
                   option, *value, "--device", "cpu", "--threads", "1", "--json")
        assert proc.returncode == 0, proc.stderr
        assert read_image(tmp_path / option[2:] / f"{case.name}_confidence.nii.gz").shape == read_image(project.image_path(case)).shape
    proc = sfr("review", "--model", model_dir, "--images", project.image_path(case), "--out", tmp_path / "rev",
               "--stride", "paper", "--window-batch", "8", "--device", "cpu", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    proc = sfr("predict", "--model", tmp_path / "nope", "--images", SAMPLE / "images", "--out", tmp_path / "o")
    assert proc.returncode == 2 and "model file not found" in proc.stderr and "Traceback" not in proc.stderr
    # the same one-line errors, through the CLI entry point in this process
    code = cli_main(["retrain", str(project.root), "--pseudo", str(tmp_path / "nopseudo"), "--iterations", "1", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "pseudo-labels.json" in err and len(err.strip().splitlines()) == 1
    code = cli_main(["retrain", str(project.root), "--crop", "30", "32", "32", "--no-sam", "--device", "cpu"])
    assert code == 2 and "multiples of 16" in capsys.readouterr().err
