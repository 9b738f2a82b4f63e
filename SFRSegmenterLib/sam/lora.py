"""LoRA on the query and value projections of an attention block's fused qkv linear layer.

Both SAM's ViT and TinyViT compute q, k and v with one ``nn.Linear``; only the positions of
q and v in its output differ (SAM ViT: ``[q | k | v]``; TinyViT: per head ``[q_h k_h v_h]``).
:class:`LoRAQKV` keeps the frozen linear layer and adds ``B_q A_q x`` to the q positions and
``B_v A_v x`` to the v positions.  ``B`` starts at zero, so a fresh LoRA changes nothing.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRAQKV(nn.Module):
    def __init__(self, qkv: nn.Linear, q_index: torch.Tensor, v_index: torch.Tensor, rank: int = 4):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.qkv = qkv
        for p in self.qkv.parameters():
            p.requires_grad_(False)
        d_in = qkv.in_features
        self.register_buffer("q_index", q_index.long(), persistent=False)
        self.register_buffer("v_index", v_index.long(), persistent=False)
        self.lora_a_q = nn.Parameter(torch.empty(rank, d_in))
        self.lora_b_q = nn.Parameter(torch.zeros(len(q_index), rank))
        self.lora_a_v = nn.Parameter(torch.empty(rank, d_in))
        self.lora_b_v = nn.Parameter(torch.zeros(len(v_index), rank))
        nn.init.kaiming_uniform_(self.lora_a_q, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.lora_a_v, a=math.sqrt(5))

    @property
    def in_features(self) -> int:
        return self.qkv.in_features

    @property
    def out_features(self) -> int:
        return self.qkv.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.qkv(x)
        dq = (x @ self.lora_a_q.t().to(x.dtype)) @ self.lora_b_q.t().to(x.dtype)
        dv = (x @ self.lora_a_v.t().to(x.dtype)) @ self.lora_b_v.t().to(x.dtype)
        out = out.index_add(-1, self.q_index, dq.to(out.dtype))
        return out.index_add(-1, self.v_index, dv.to(out.dtype))


def vit_qv_index(dim: int) -> tuple:
    """SAM ViT layout ``[q | k | v]`` of width ``3 * dim``."""
    return torch.arange(0, dim), torch.arange(2 * dim, 3 * dim)


def tinyvit_qv_index(num_heads: int, key_dim: int, v_dim: int) -> tuple:
    """TinyViT layout: per head ``[q (key_dim) | k (key_dim) | v (v_dim)]``."""
    per = 2 * key_dim + v_dim
    q = torch.cat([torch.arange(h * per, h * per + key_dim) for h in range(num_heads)])
    v = torch.cat([torch.arange(h * per + 2 * key_dim, (h + 1) * per) for h in range(num_heads)])
    return q, v


def add_lora(encoder: nn.Module, rank: int, attention: str = "vit") -> int:
    """Freeze ``encoder`` and put LoRA on every attention block's qkv; returns the block count.

    ``attention`` is the backbone's layout of the fused qkv output (its registry entry's
    ``lora_attention``): ``vit`` (q, k, v of ``dim`` each) or ``tinyvit`` (per head)."""
    if attention not in ("vit", "tinyvit"):
        raise ValueError(f"unknown attention layout {attention!r}")
    for p in encoder.parameters():
        p.requires_grad_(False)
    count = 0
    for module in list(encoder.modules()):
        qkv = getattr(module, "qkv", None)
        if not isinstance(qkv, nn.Linear):
            continue
        tinyvit = hasattr(module, "key_dim") and hasattr(module, "d")
        if tinyvit != (attention == "tinyvit"):
            raise ValueError(f"attention block {type(module).__name__} is not of the {attention} layout")
        if tinyvit:
            q, v = tinyvit_qv_index(module.num_heads, module.key_dim, module.d)
        else:  # SAM ViT attention: out = 3 * dim
            q, v = vit_qv_index(qkv.out_features // 3)
        module.qkv = LoRAQKV(qkv, q, v, rank)
        count += 1
    if count == 0:
        raise ValueError("no attention block with a qkv linear layer found")
    return count
