"""Sliding windows (SFRSegmenterLib/sliding.py): positions, the stride rule and its presets, the one
inferer with its two predictors (V-Net softmax, SAM windows), and the options of the commands."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from SFRSegmenterLib.cli import main as cli_main
from SFRSegmenterLib.errors import Cancelled, SFRError
from SFRSegmenterLib.retrain.data import normalize
from SFRSegmenterLib.retrain.inference import predict_volume
from SFRSegmenterLib.retrain.networks import build_network
from SFRSegmenterLib.sliding import (
    DEFAULT_OVERLAP,
    MAX_OVERLAP,
    Overlap,
    count_windows,
    overlap_stride,
    resolve_stride,
    sliding_window,
    window_corners,
    window_starts,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _vnet(num_classes=3, window=(16, 16, 16)):
    torch.manual_seed(0)
    model = build_network("vnet", 1, num_classes).eval()
    model.sfr_meta = {"window": list(window), "normalization": "zscore"}
    return model


@pytest.mark.parametrize("size", [1, 15, 16, 17, 35, 51, 88, 143, 206])
@pytest.mark.parametrize("window", [16, 32, 80])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75, MAX_OVERLAP])
def test_windows_cover_the_volume_and_their_count_is_bounded(size, window, overlap):
    (stride,) = overlap_stride((window,), overlap)
    starts = window_starts(size, window, stride)
    covered = np.zeros(max(size, window), int)
    for s in starts:
        covered[s:s + window] += 1
        assert 0 <= s and s + window <= max(size, window)
    assert covered[:size].all() and starts == sorted(set(starts))
    # the bound, whatever the window size: a voxel lies in at most ceil(1 / (1 - overlap)) windows
    # along an axis (one more near the far border, where the last window is moved back), and an
    # axis has at most that many windows per window length, plus one
    per_voxel = math.ceil(round(1 / (1 - overlap), 6))
    assert covered[:max(0, size - window)].max(initial=0) <= per_voxel and covered.max() <= per_voxel + 1
    assert len(starts) <= math.ceil(max(0, size - window) / window * per_voxel) + 1


def test_the_default_overlap_and_the_paper_preset():
    # the paper preset is the paper's stride for its window and the old default for others
    assert resolve_stride((80, 112, 112), "paper") == (4, 18, 18)
    assert resolve_stride((16, 16, 16), "paper") == (1, 3, 3)
    # the paper's windows on an LA volume: bench/results/retrain_speed.md counted 63 of them
    assert count_windows((88, 143, 206), (80, 112, 112), resolve_stride((80, 112, 112), "paper")) == 63
    assert window_starts(88, 80, 4) == [0, 4, 8] and window_starts(244, 112, 18)[-1] == 132
    # the default is an overlap: the 16^3 model on a 35x51x35 hippocampus volume
    assert resolve_stride((16, 16, 16)) == overlap_stride((16, 16, 16), DEFAULT_OVERLAP)
    assert count_windows((35, 51, 35), (16, 16, 16), resolve_stride((16, 16, 16), "paper")) == 2080
    assert count_windows((35, 51, 35), (16, 16, 16), resolve_stride((16, 16, 16))) < 2080 / 5
    assert resolve_stride((80, 112, 112), None, 0.0) == (80, 112, 112)
    assert resolve_stride((16, 32, 32), Overlap(0.5)) == (8, 16, 16)
    assert resolve_stride((16, 32, 32), (3, 5, 7)) == (3, 5, 7)


@pytest.mark.parametrize("stride,overlap,message", [
    ("fast", None, "paper"), ((0, 4, 4), None, "positive"), ((4, 4), None, "3 positive"),
    (None, 1.0, "--overlap"), (None, -0.1, "--overlap"), (None, float("nan"), "--overlap"),
    (None, "x", "--overlap"), ((4, 4, 4), 0.5, "not both"),
])
def test_bad_strides_and_overlaps_are_refused(stride, overlap, message):
    with pytest.raises(SFRError, match=message):
        resolve_stride((16, 16, 16), stride, overlap)


def test_stride_equal_to_the_window_gives_each_tile_its_own_forward():
    """Unchanged results at stride = window: every voxel from exactly one window's softmax."""
    rng = np.random.default_rng(3)
    arr = rng.normal(size=(32, 16, 48)).astype(np.float32)
    model = _vnet()
    prob = predict_volume(model, arr, stride=(16, 16, 16))
    assert np.array_equal(prob, predict_volume(model, arr, overlap=0.0))
    x = torch.from_numpy(normalize(arr))
    with torch.no_grad():
        for z, y, w in window_corners(arr.shape, (16, 16, 16), (16, 16, 16)):
            tile = x[z:z + 16, y:y + 16, w:w + 16][None, None]
            ref = torch.softmax(model(tile), 1)[0].numpy()
            assert np.allclose(prob[:, z:z + 16, y:y + 16, w:w + 16], ref, atol=1e-6)
    # Gaussian weights change nothing where windows do not overlap
    assert np.allclose(predict_volume(model, arr, overlap=0.0, blend="gaussian"), prob, atol=1e-6)


def test_default_overlap_on_a_small_volume_averages_a_distribution():
    rng = np.random.default_rng(4)
    arr = rng.normal(size=(21, 37, 9)).astype(np.float32)  # not a multiple, one axis under the window
    model = _vnet()
    calls = []

    def counted(tiles, corners):
        calls.append(len(corners))
        return torch.softmax(model(torch.from_numpy(tiles)[:, None]), 1)

    with torch.no_grad():
        direct = sliding_window(normalize(arr), (16, 16, 16), resolve_stride((16, 16, 16)), counted, batch=3)
    prob = predict_volume(model, arr, batch=3)
    assert np.allclose(prob, direct, atol=1e-6) and prob.shape == (3, 21, 37, 9)
    assert sum(calls) == count_windows(arr.shape, (16, 16, 16), resolve_stride((16, 16, 16)))
    assert np.allclose(prob.sum(0), 1.0, atol=1e-5)
    gauss = predict_volume(model, arr, overlap=0.5, blend="gaussian")
    assert np.allclose(gauss.sum(0), 1.0, atol=1e-5) and not np.allclose(gauss, predict_volume(model, arr, overlap=0.5))
    with pytest.raises(SFRError, match="blend"):
        predict_volume(model, arr, blend="cosine")
    with pytest.raises(Cancelled):
        sliding_window(arr, (16, 16, 16), (8, 8, 8), counted, should_stop=lambda: True)


def test_sam_windows_sit_where_the_vnet_windows_sit(tmp_path, sample_dir):
    """Stage F's pseudo-labelling windows follow the same rule (one routine for both predictors)."""
    import shutil

    from SFRSegmenterLib.finetune import FinetuneConfig, finetune
    from SFRSegmenterLib.io import read_image
    from SFRSegmenterLib.manifest import init_project
    from SFRSegmenterLib.pseudolabel import SamWindows, load_sam_model, predict_probabilities, pseudolabel
    from SFRSegmenterLib.sam.preprocess import normalize as sam_normalize

    root = tmp_path / "proj"
    for sub in ("images", "labels"):
        shutil.copytree(sample_dir / sub, root / sub)
    project = init_project(root, root / "images", root / "labels", labeled=2)
    model_dir = finetune(project, FinetuneConfig(backbone="tiny_test", iterations=1, device="cpu", crop=(16, 16, 16)),
                         out_dir=tmp_path / "sam")
    model = load_sam_model(model_dir, "cpu")
    image = read_image(project.image_path(project.by_role("unlabeled")[0]))
    crop = model.layout.crop
    seen = []
    sam = SamWindows(model, model.layout)

    def recorded(tiles, corners):
        seen.extend(corners)
        return sam(tiles, corners)

    with torch.no_grad():
        direct = sliding_window(sam_normalize(image.array, model.meta["preprocess"]), crop,
                                overlap_stride(crop, 0.5), recorded, pad="end")
    assert seen == window_corners([max(s, c) for s, c in zip(image.shape, crop)], crop, overlap_stride(crop, 0.5))
    assert np.allclose(predict_probabilities(model, image, overlap=0.5), direct, atol=1e-6)
    with pytest.raises(SFRError, match="overlap"):
        pseudolabel(project, model_dir, out_dir=tmp_path / "pseudo", device="cpu", overlap=0.95)
    assert not (tmp_path / "pseudo").exists()


@pytest.mark.parametrize("args,option", [
    (["--overlap", "1.5"], "--overlap"), (["--overlap", "half"], "--overlap"), (["--overlap", "-0.2"], "--overlap"),
    (["--stride", "0", "4", "4"], "--stride"), (["--stride", "fast"], "--stride"), (["--stride", "4", "4"], "--stride"),
    (["--stride", "4", "4", "x"], "--stride"), (["--stride", "paper", "--overlap", "0.5"], "--overlap"),
    (["--window-batch", "0"], "--window-batch"),
])
@pytest.mark.parametrize("command", ["predict", "review"])
def test_bad_window_options_exit_2_with_one_line(command, args, option, tmp_path, capsys, sample_dir):
    try:  # a usage error leaves argparse with SystemExit(2), a bad value sfr with 2
        code = cli_main([command, "--model", str(tmp_path / "m"), "--images", str(sample_dir / "images"),
                         "--out", str(tmp_path / "out"), *args])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and option in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
