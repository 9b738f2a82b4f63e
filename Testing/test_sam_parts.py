"""Building blocks of stage F: loss, windows, augmentation, preprocessing, layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SFRSegmenterLib.sam import augment
from SFRSegmenterLib.sam.layout import Layout, pad_to, resolve_layout
from SFRSegmenterLib.sam.loss import dice_ce_loss
from SFRSegmenterLib.sam.preprocess import normalize
from SFRSegmenterLib.stitching import IGNORE_INDEX


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_loss_ignores_padding_label():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 16, 16))
    target[:, :4] = IGNORE_INDEX
    logits = torch.randn(2, 3, 16, 16)
    other = logits.clone()
    other[:, :, :4] = 100 * torch.randn(2, 3, 4, 16)  # change only ignored pixels
    assert torch.allclose(dice_ce_loss(logits, target), dice_ce_loss(other, target))
    perfect = 50.0 * torch.nn.functional.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).float()
    assert dice_ce_loss(perfect, target) < 1e-3 < dice_ce_loss(logits, target)
    all_ignored = torch.full((1, 8, 8), IGNORE_INDEX)
    assert float(dice_ce_loss(torch.randn(1, 3, 8, 8, requires_grad=True), all_ignored).detach()) == 0.0


def test_augmentations_move_image_and_label_together():
    rng = np.random.default_rng(3)
    vol = rng.random((20, 30, 24)).astype(np.float32)
    lab = (vol * 100).astype(np.uint8)
    for seed in range(8):
        r = np.random.default_rng(seed)
        img, l2 = augment.rot_flip_3d(vol, lab, r)
        assert np.array_equal((img * 100).astype(np.uint8), l2)
        img, l2 = augment.random_crop(img, l2, (16, 32, 32), r)  # padded where needed
        assert img.shape == l2.shape == (16, 32, 32)
        valid = l2 != IGNORE_INDEX
        assert np.array_equal((img[valid] * 100).astype(np.uint8), l2[valid])
        c, cl = augment.rot_flip_2d(img[:2], l2[:2], r)
        assert np.array_equal(np.where(cl == IGNORE_INDEX, 0, cl), np.where(cl == IGNORE_INDEX, 0, (c * 100).astype(np.uint8)))


def test_bezier_curve_is_monotone_and_keeps_range():
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(6, 10, 10)).astype(np.float32)
    out = augment.bezier_per_slice(vol, rng, p=1.0)
    for k in range(6):
        assert np.isclose(out[k].min(), vol[k].min(), atol=1e-5) and np.isclose(out[k].max(), vol[k].max(), atol=1e-5)
        order = np.argsort(vol[k].ravel())
        assert np.all(np.diff(out[k].ravel()[order]) >= -1e-5)  # monotone remapping


def test_percentile_normalisation_puts_volumes_on_one_scale():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(8, 20, 20)).astype(np.float32)
    b = 3.7 * a + 10
    na, nb = normalize(a, "percentile"), normalize(b, "percentile")
    assert na.min() == 0 and na.max() == 1 and np.allclose(na, nb, atol=1e-5)
    z = normalize(b, "zscore")
    assert abs(z.mean()) < 1e-4 and abs(z.std() - 1) < 1e-3


def test_sam_zscore_and_vnet_normalisation_are_one_function():
    from SFRSegmenterLib.retrain.data import normalize as vnet_normalize

    rng = np.random.default_rng(2)
    for vol in (rng.normal(5, 2, size=(6, 9, 9)), rng.normal(0, 1e-10, (4, 5, 5))):
        assert np.array_equal(normalize(vol, "zscore"), vnet_normalize(vol))
    flat = normalize(rng.normal(0, 1e-10, (4, 5, 5)), "zscore")
    assert np.abs(flat).max() < 1e-6  # near-constant: zeros, not noise blown up to unit variance


def test_layout_default_crop_is_cut_to_the_data_explicit_crop_is_kept():
    shapes = [(36, 50, 35), (30, 52, 33)]
    cut = resolve_layout(256, (16, 128, 128), (4, 4), None, shapes)
    assert cut.crop == (16, 52, 35)
    kept = resolve_layout(256, (16, 160, 256), (4, 4), None, shapes, cut=False)
    assert kept.crop == (16, 160, 256) and kept.plan().scale == (0.25, 0.25)
    assert Layout.from_dict(kept.to_dict()) == kept
    assert pad_to(np.zeros((2, 3, 4)), (3, 3, 5), 7).shape == (3, 3, 5)


def test_activation_checkpointing_gives_the_same_gradients():
    from SFRSegmenterLib.sam.model import set_grad_checkpointing
    from SFRSegmenterLib.sam import build_segmenter

    torch.manual_seed(0)
    model = build_segmenter("tiny_test", num_classes=2, lora_rank=4).train()
    for n, p in model.named_parameters():
        if "lora_b" in n:
            torch.nn.init.normal_(p)  # make LoRA gradients of A non-zero
    x = torch.rand(2, 3, 128, 128)
    y = torch.randint(0, 2, (2, 128, 128))

    def grads():
        model.zero_grad()
        dice_ce_loss(model.logits(x), y).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    assert set_grad_checkpointing(model, True) == 2
    ckpt = grads()
    set_grad_checkpointing(model, False)
    assert plain.keys() == ckpt.keys() and any(".lora_a" in n for n in plain)
    assert all(torch.allclose(plain[n], ckpt[n], atol=1e-6) for n in plain)


def test_rank_preprocessing_gives_every_volume_the_same_histogram():
    from SFRSegmenterLib.sam.preprocess import normalize

    rng = np.random.default_rng(0)
    base = rng.normal(size=(6, 10, 10)).astype(np.float32)
    bright = np.exp(base) * 50 + 7  # another contrast, same order of voxels
    a, b = normalize(base, "rank"), normalize(bright, "rank")
    assert np.allclose(a, b) and a.min() == 0.0 and a.max() == 1.0
    ties = normalize(np.array([3, 1, 2, 2, 10], dtype=np.float32), "rank")
    assert list(ties) == [0.75, 0.0, 0.375, 0.375, 1.0]
    assert not normalize(np.full((2, 2, 2), 4.0, dtype=np.float32), "rank").any()
