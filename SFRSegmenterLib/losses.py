"""The segmentation loss of both training stages: 0.5 * (cross-entropy + soft Dice).

One function with the options that tell the two stages apart:

* stage F (:func:`SFRSegmenterLib.sam.loss.dice_ce_loss`): Dice over the whole batch per class,
  background included, ``smooth`` 1e-5, padding pixels (``ignore_index``) in neither term;
* stage R (:func:`SFRSegmenterLib.retrain.ssl.seg_loss`): Dice per sample over the foreground
  classes, ``smooth`` 1, voxels labelled 255 (not annotated) ignored when present.  Per-sample Dice keeps the loss of a batch equal to
  the mean of its halves' losses, which is what makes data-parallel training match one process.

Both are the same numbers, bit for bit, as the two functions they replace
(``Testing/test_losses.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: "int | None" = None,
    batch_dice: bool = True,
    include_background: bool = True,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """``logits [B, K, ...]`` (float), ``target [B, ...]`` (integer class per pixel) -> scalar.

    ``batch_dice``: one Dice per class over the batch (else one per sample and class, then the
    mean); ``include_background``: class 0 counts in the Dice mean; ``ignore_index``: pixels with
    this label count in neither term (a batch of only those gives 0, with a gradient graph)."""
    target = target.long()
    k = logits.shape[1]
    if ignore_index is not None:
        valid = target != ignore_index
        if not bool(valid.any()):
            return logits.sum() * 0.0
        ce = F.cross_entropy(logits, target, ignore_index=ignore_index)
        prob = torch.softmax(logits, dim=1) * valid[:, None]
        onehot = F.one_hot(torch.where(valid, target, 0), k).movedim(-1, 1).to(prob.dtype)
        onehot = onehot * valid[:, None]
    else:
        ce = F.cross_entropy(logits, target)
        prob = torch.softmax(logits, dim=1)
        onehot = F.one_hot(target, k).movedim(-1, 1).to(prob.dtype)
    spatial = tuple(range(2, prob.ndim))
    dims = (0, *spatial) if batch_dice else spatial
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    if not include_background:
        inter, denom = inter[..., 1:], denom[..., 1:]
    dice = 1.0 - ((2.0 * inter + smooth) / (denom + smooth)).mean()
    return 0.5 * (ce + dice)


def log_prior_logits(priors) -> torch.Tensor:
    """Logits whose softmax is the class distribution ``priors`` (each at least 1e-4), centred to
    mean 0: the starting offsets of an output layer (stage F's class offsets, stage R's bias)."""
    p = torch.as_tensor([max(float(v), 1e-4) for v in priors], dtype=torch.float32)
    bias = torch.log(p / p.sum())
    return bias - bias.mean()
