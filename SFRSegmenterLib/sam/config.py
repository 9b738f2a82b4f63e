"""Stage F's configuration (``FinetuneConfig``), importable without torch: the command line reads
its defaults from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass
class FinetuneConfig:
    backbone: str = "lite_medsam"
    checkpoint: "str | None" = None  # base weights; None: the backbone's default file
    download: bool = False  # allow downloading the official SAM ViT-B checkpoint
    iterations: int = 6000
    batch_size: int = 2
    lora_rank: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.1
    poly_power: float = 0.9
    # iterations of linear learning-rate warm-up before the poly decay (0: none); None: auto,
    # min(50, iterations // 6): 50 of 300-450 steps measured better on LA, hippocampus and the demo
    # at two seeds each (docs/stage-f.md, "Learning-rate warm-up")
    warmup: "int | None" = None
    seed: int = 1337
    device: str = "auto"
    save_every: int = 200
    crop: "Sequence[int] | None" = None  # (D, H, W); None: backbone default, cut to the data
    canvas: "int | None" = None  # None: backbone input size
    grid: "Sequence[int] | str | None" = None  # (rows, cols); None: backbone default; "native"
    scale: "float | None" = None  # in-plane slice scale; None: fit the grid
    bf16: "bool | None" = None  # autocast bf16; None: on for CUDA only
    grad_checkpointing: bool = False
    augment: bool = True
    # the paper's 90-degree rotations and flips (of the volume in-plane and of the whole mosaic):
    # off by default, since a project's volumes share one orientation and these make left/right
    # and anterior/posterior structures indistinguishable (bench/results/demo_ablation.md)
    orientation_augment: bool = False
    bezier_p: float = 0.5
    preprocess: "str | None" = None  # intensity normalisation (sam.preprocess.METHODS); None: the backbone's
    threads: "int | None" = None  # torch CPU threads; None: leave as is
    # CPU-friendly mode: with lora_rank 0 the encoder is frozen, so the embeddings of
    # ``embedding_cache`` augmented mosaics are computed once and the decoder trains on them
    # (only those the iterations draw: finetune.drawn_entries).
    embedding_cache: int = 0
    # start the decoder's per-class logit offsets at the training labels' log class priors (the
    # first softmax is the label distribution); False: every class at logit 0
    prior_bias: bool = True
    # the learning rate of the layers that start at zero (the last layer of each class's
    # hypernetwork head, sam.model.resize_mask_tokens) as a multiple of ``lr``: new layers may
    # learn faster than the pretrained decoder they read from
    head_lr_scale: float = 1.0


AUTO_WARMUP = 50


def resolved_warmup(cfg: "FinetuneConfig") -> int:
    """The warm-up iterations ``cfg`` trains with: its own, or min(50, iterations // 6) when None."""
    return min(AUTO_WARMUP, int(cfg.iterations) // 6) if cfg.warmup is None else int(cfg.warmup)


# Settings that must be the same to resume.
_RESUME_KEYS = ("backbone", "iterations", "batch_size", "lora_rank", "lr", "weight_decay", "poly_power", "warmup",
                "seed", "augment", "orientation_augment", "bezier_p", "embedding_cache", "preprocess",
                "head_lr_scale")
