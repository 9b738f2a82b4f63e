"""Loss of the SFR fine-tuning: 0.5 * (soft Dice + cross-entropy), padding label ignored."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..stitching import IGNORE_INDEX


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX, eps: float = 1e-5):
    """``logits [B, K, H, W]`` (float), ``target [B, H, W]`` (long) -> scalar loss.

    Dice is computed over the whole batch per class (background included) and averaged over
    classes; pixels labelled ``ignore_index`` count in neither term.
    """
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
