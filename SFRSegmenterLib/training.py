"""The checkpoint/resume skeleton both training stages share (stage F: :mod:`.finetune`, stage R:
:mod:`.retrain.train`).

Each stage saves its own files (stage F: trained parts, optimizer state and metadata as the
commit point; stage R: one ``checkpoint.pt``), always through :func:`io.atomic_path`.  What is
the same is here: reading a saved state safely (``weights_only``), deciding that a saved run is
the same run as the one asked for (else one line naming what differs), and when to save.
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping

from .errors import SFRError


def read_state(path: "str | os.PathLike", what: str = "checkpoint") -> dict:
    """A saved training state (tensors and plain values only); SFRError naming ``path`` when it
    cannot be read (empty, truncated, not a PyTorch file, or holding other Python objects)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, zipfile errors ...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]  # an empty file: no text
        raise SFRError(f"cannot read {what} ({reason})", path) from None


def differences(saved: Mapping, current: Mapping, keys: "Iterable[str] | None" = None) -> list:
    """``"name saved vs now"`` for every key (default: all of ``current``) whose value differs
    (a long value is named without its values)."""
    out = []
    for key in current if keys is None else keys:
        was, now = saved.get(key), current.get(key)
        if was != now:
            shown = f"{key} {was} vs {now}"
            out.append(shown if len(shown) <= 80 else key)
    return out


def check_same_run(diffs: list, path: "str | os.PathLike") -> None:
    """Refuse to resume a run saved with other settings: one line listing them."""
    if diffs:
        raise SFRError("cannot resume: the checkpoint is from a different run (" + ", ".join(diffs)
                       + "); start again without --resume or use another --out", path)


def save_due(done: int, every: int, total: int) -> bool:
    """Save after iteration ``done`` (1-based) of ``total``: every ``every`` iterations and at the
    end (``every`` 0: only at the end)."""
    return done == total or (every > 0 and done % every == 0)


def check_finite_loss(value: float, stage: str, iteration: int, where: "str | os.PathLike", option: str) -> float:
    """``value`` when finite; else stop the stage with one line (nothing saved from this step on,
    so the last saved checkpoint stays the last good one)."""
    import math

    value = float(value)
    if not math.isfinite(value):
        raise SFRError(f"{stage} diverged: the loss became {value} at iteration {iteration + 1}; stopped, the "
                       f"last good checkpoint is kept and nothing non-finite is published (lower the learning "
                       f"rate: {option})", where)
    return value


def check_finite_weights(tensors, stage: str, iteration: int, where: "str | os.PathLike", option: str) -> None:
    """Stop the stage with one line before saving ``tensors`` (a state dict's values: weights and
    buffers such as batch-norm statistics) when one holds NaN or infinity."""
    import torch

    bad = sum(int(not torch.isfinite(t.detach()).all()) for t in tensors if t.is_floating_point())
    if bad:
        raise SFRError(f"{stage} diverged: {bad} weight tensor(s) became non-finite by iteration {iteration}; "
                       f"stopped before saving, the last good checkpoint is kept (lower the learning rate: "
                       f"{option})", where)
