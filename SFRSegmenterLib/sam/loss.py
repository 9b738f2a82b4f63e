"""Loss of the SFR fine-tuning: 0.5 * (soft Dice + cross-entropy), padding label ignored."""

from __future__ import annotations

import torch

from ..losses import dice_ce
from ..stitching import IGNORE_INDEX


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX, eps: float = 1e-5):
    """``logits [B, K, H, W]`` (float), ``target [B, H, W]`` (long) -> scalar loss.

    Dice is computed over the whole batch per class (background included) and averaged over
    classes; pixels labelled ``ignore_index`` count in neither term (:func:`..losses.dice_ce`).
    """
    return dice_ce(logits, target, ignore_index=ignore_index, smooth=eps)
