"""The one Dice/CE loss family gives both stages' losses and gradients bit for bit as the two
functions it replaced (their code is kept below as the reference)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from SFRSegmenterLib.losses import dice_ce
from SFRSegmenterLib.retrain.ssl import seg_loss
from SFRSegmenterLib.sam.loss import dice_ce_loss
from SFRSegmenterLib.stitching import IGNORE_INDEX


def old_stage_f(logits, target, ignore_index=IGNORE_INDEX, eps=1e-5):  # sam/loss.py before
    valid = target != ignore_index
    k = logits.shape[1]
    if not bool(valid.any()):
        return logits.sum() * 0.0
    ce = F.cross_entropy(logits, target, ignore_index=ignore_index)
    probs = torch.softmax(logits, dim=1) * valid[:, None]
    onehot = F.one_hot(torch.where(valid, target, 0), k).permute(0, 3, 1, 2).to(probs.dtype)
    onehot = onehot * valid[:, None]
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    denom = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    dice = 1.0 - ((2.0 * inter + eps) / (denom + eps)).mean()
    return 0.5 * (ce + dice)


def old_stage_r(logits, target, smooth=1.0):  # retrain/ssl.py before
    k = logits.shape[1]
    prob = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target.long(), k).movedim(-1, 1).to(prob.dtype)
    dims = tuple(range(2, prob.ndim))
    inter = (prob * onehot).sum(dims)[:, 1:]
    denom = prob.sum(dims)[:, 1:] + onehot.sum(dims)[:, 1:]
    dice = 1.0 - ((2 * inter + smooth) / (denom + smooth)).mean()
    return 0.5 * (F.cross_entropy(logits, target.long()) + dice)


def _same(new_fn, old_fn, logits, target):
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    new, old = new_fn(a, target), old_fn(b, target)
    new.backward()
    old.backward()
    assert torch.equal(new.detach(), old.detach()), (float(new), float(old))
    assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("classes", [2, 3])
def test_stage_f_loss_is_bit_identical(seed, classes):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, 16, 12, generator=g) * 3
    target = torch.randint(0, classes, (2, 16, 12), generator=g)
    target[:, :3] = IGNORE_INDEX  # mosaic padding
    _same(dice_ce_loss, old_stage_f, logits, target)
    target[:] = IGNORE_INDEX
    _same(dice_ce_loss, old_stage_f, logits, target)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("classes", [2, 3])
def test_stage_r_loss_is_bit_identical(seed, classes):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, classes, 8, 10, 6, generator=g) * 3
    target = torch.randint(0, classes, (3, 8, 10, 6), generator=g).to(torch.uint8)
    _same(seg_loss, old_stage_r, logits, target)


def test_the_options_are_the_difference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 6, 6, generator=g)
    target = torch.randint(0, 3, (2, 6, 6), generator=g)
    batch = dice_ce(logits, target)
    assert dice_ce(logits, target, batch_dice=False) != batch
    assert dice_ce(logits, target, include_background=False) != batch
    # a perfect prediction has (almost) no loss in either form
    perfect = F.one_hot(target, 3).movedim(-1, 1).float() * 50
    assert dice_ce(perfect, target) < 1e-3
    assert dice_ce(perfect, target, batch_dice=False, include_background=False, smooth=1.0) < 1e-3
