"""GPU out of memory during a stage: halve the batch and try again (used by the stages in
:mod:`.pipeline`; :mod:`.job` reports what is left)."""

from __future__ import annotations

import dataclasses

from .. import events
from ..errors import SFRError


def is_oom(exc: BaseException) -> bool:
    """A GPU (CUDA or MPS) out-of-memory error."""
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _batch_fields(stage_cfg) -> list:
    return [n for n in ("batch_size", "labeled_bs", "unlabeled_bs") if hasattr(stage_cfg, n)]


def _release_gpu_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


def with_oom_retry(call, stage_cfg, what: str):
    """Run ``call(stage_cfg, after_oom)``; on GPU out-of-memory halve the batch and retry.

    After batch 1 also runs out of memory: SFRError suggesting LiteMedSAM or the CPU.
    """
    retried = False
    while True:
        try:
            return call(stage_cfg, retried)
        except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
            if not is_oom(exc):
                raise
            message = str(exc).splitlines()[0][:200]
        # outside the except block: the failed call's frames (and their GPU tensors) are released
        _release_gpu_memory()
        sizes = {n: int(getattr(stage_cfg, n)) for n in _batch_fields(stage_cfg)}
        if not sizes or all(v <= 1 for v in sizes.values()):
            raise SFRError(
                f"the GPU ran out of memory in {what} even with batch size 1 ({message}); use a smaller "
                "backbone (--backbone lite_medsam) or run on the CPU (--device cpu)"
            )
        smaller = {n: max(1, v // 2) for n, v in sizes.items()}
        events.log(f"GPU out of memory in {what} with batch {sizes}; retrying with batch {smaller}", "warning")
        stage_cfg = dataclasses.replace(stage_cfg, **smaller)
        retried = True
