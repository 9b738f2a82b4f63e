"""A SAM-family segmenter built from the registry's spec, its checked base checkpoint and LoRA.

Importable without torch (torch is imported when a model is built).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import events
from ..errors import SFRError
from .registry import get_spec

if TYPE_CHECKING:  # pragma: no cover
    from .model import SamSegmenter

#: The seed of the test-only backbone's random base weights.
TEST_WEIGHTS_SEED = 0
#: The test-only backbones this process has warned about.
_WARNED = set()


def build_segmenter(
    name: str,
    checkpoint=None,
    num_classes: int = 2,
    lora_rank: int = 4,
    download: bool = False,
    expected_sha256: "str | None" = None,
    random_weights: bool = False,
) -> "SamSegmenter":
    """Build backbone ``name`` with its weights, ``num_classes`` output masks and LoRA.

    ``model.meta`` gets ``backbone``, ``checkpoint`` (path or None) and ``checkpoint_sha256``.
    ``random_weights`` skips the checkpoint (speed/memory benchmarks only).
    """
    from . import checkpoints
    from .checkpoints import resolve_checkpoint
    from .lora import add_lora
    import torch

    from .model import SamSegmenter, resize_mask_tokens, set_trainable

    spec = get_spec(name)
    # random_weights: benchmarks of speed and memory only (no checkpoint reachable)
    path = None if random_weights else resolve_checkpoint(name, checkpoint, download)
    sha = state = None
    if path is not None:  # check and read the file before building a large architecture
        sha = checkpoints.verify_known(path) if path.is_file() else None
        if expected_sha256 and sha and sha != expected_sha256:
            raise SFRError(
                f"base checkpoint has sha256 {sha[:12]}..., but the model was fine-tuned from "
                f"{expected_sha256[:12]}...; give the same base checkpoint",
                path,
            )
        state = checkpoints.load_state_dict(path)
    if spec.test_only and state is None:
        # the test-only model's base weights from a fixed seed: the same encoder when training and
        # when a saved model is loaded again (its frozen parts are not saved)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TEST_WEIGHTS_SEED)
            arch = spec.build()
    else:
        arch = spec.build()
    if state is not None:
        checkpoints.load_strict(arch, state, path, name)
        del state
    model = SamSegmenter(arch.image_encoder, arch.prompt_encoder, arch.mask_decoder, spec.canvas)
    resize_mask_tokens(model.mask_decoder, int(num_classes))
    # lora_rank 0: the whole encoder stays frozen (embeddings can then be cached)
    blocks = add_lora(model.image_encoder, int(lora_rank), spec.lora_attention) if int(lora_rank) > 0 else 0
    set_trainable(model)
    # the encoder's convolution weights channels-last: oneDNN's faster layout on a CPU (LiteMedSAM's
    # encoder 20 % faster on 2 cores; outputs equal to 2e-6); SamSegmenter.encode returns contiguous
    model.image_encoder.to(memory_format=torch.channels_last)
    model.meta = {
        "backbone": name,
        "checkpoint": None if path is None else str(path.resolve()),
        "checkpoint_sha256": sha,
        "lora_blocks": blocks,
        "lora_rank": int(lora_rank),
        "num_masks": int(num_classes),
    }
    if random_weights and not spec.test_only:
        model.meta["random_weights"] = True
    if spec.test_only and name not in _WARNED:  # once per process (a run builds it up to four times)
        _WARNED.add(name)
        events.log("backbone tiny_test: randomly initialised TEST-ONLY model, predictions are meaningless", "warning")
    return model


def count_parameters(model) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lora = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    return {"total": total, "trainable": trainable, "lora": lora}
