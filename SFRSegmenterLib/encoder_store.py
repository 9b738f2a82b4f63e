"""Frozen-encoder outputs kept on disk per case, so that an image goes through SAM's encoder once.

With a frozen encoder (LoRA rank 0: the CPU budget, ``sfr demo``), what the encoder makes of a
window depends only on the encoder's weights and the window's pixels.  Yet every SFR+ round
pseudo-labels its untrusted cases again with a new decoder, and a warm start (``--warm-start``)
pseudo-labels every unlabeled case again: the same encoder passes, which are most of stage F's
inference cost.  An :class:`EncoderStore` keeps one file per case,
``<folder>/<case>-<key>.pt`` (``{window corner: fp16 embedding}``), where the key hashes the
encoder's weights, the stitching layout, the preprocessing, the overlap and the image's contents:
a file of that name is valid wherever it lies, so ``sfr run`` hard-links the files of earlier
runs of the project into the new run (:func:`link_earlier`).

Embeddings are kept as float16, as stage F's training cache keeps them, and the decoder always
reads them rounded (:class:`~.pseudolabel.SamWindows`): a case decodes the same whether its
embeddings came from the store or were computed just now.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch

from .io import atomic_path, inside

#: Part of every key: bump when what a stored embedding means changes.
STORE_VERSION = 1
SUFFIX = ".pt"
#: The most one folder keeps (LiteMedSAM: 2 MB per window; the demo's 10 cases ~0.1 GB): past it,
#: cases are not stored and their later rounds encode again.
MAX_BYTES = 4 * 1024**3


def encoder_digest(model) -> str:
    """sha256 over the frozen image encoder's weights (names, dtypes, shapes, values)."""
    from .finetune import content_digest

    return content_digest(model.image_encoder.state_dict())


def frozen(model) -> bool:
    return int(model.meta.get("lora_rank", 0)) == 0


class EncoderStore:
    """The embeddings of one encoder (``model``, frozen) under ``folder``."""

    def __init__(self, folder: "str | os.PathLike", model):
        if not frozen(model):
            raise ValueError("an encoder store needs a frozen-encoder model (LoRA rank 0)")
        self.folder = Path(folder)
        self.encoder = encoder_digest(model)
        self.layout = model.layout.to_dict()
        self.preprocess = model.meta.get("preprocess")

    def name(self, case: str, image_sha256: str, overlap: float) -> str:
        blob = json.dumps([STORE_VERSION, self.encoder, self.layout, self.preprocess, image_sha256, float(overlap)],
                          sort_keys=True, default=str).encode("utf-8")
        return f"{case}-{hashlib.sha256(blob).hexdigest()[:20]}{SUFFIX}"

    def load(self, name: str) -> dict:
        """``{(z, y, x): embedding}`` stored under ``name``; empty when none or unreadable (then the
        encoder runs again and the file is rewritten)."""
        path = inside(self.folder, name)
        if not path.is_file():
            return {}
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            return {tuple(int(v) for v in corner): emb for corner, emb in stored.items()}
        except Exception:  # a damaged file costs a recomputation, never a wrong label
            return {}

    def save(self, name: str, embeddings: dict) -> bool:
        """Store ``embeddings`` under ``name``; False (nothing written) when the folder would pass
        :data:`MAX_BYTES`."""
        size = sum(e.numel() * e.element_size() for e in embeddings.values())
        used = sum(p.stat().st_size for p in self.folder.glob(f"*{SUFFIX}")) if self.folder.is_dir() else 0
        if used + size > MAX_BYTES:
            return False
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(inside(self.folder, name)) as tmp:
            torch.save({tuple(int(v) for v in corner): emb.contiguous() for corner, emb in embeddings.items()}, tmp)
        return True


def is_case_file(name: str, case: str) -> bool:
    """Whether ``name`` is a store file of ``case`` (any encoder)."""
    return re.fullmatch(re.escape(case) + r"-[0-9a-f]{20}" + re.escape(SUFFIX), name) is not None


def link_earlier(folder: Path, earlier: "list[Path]", cases: "list[str] | None" = None) -> int:
    """Hard-link (copy where links fail) into ``folder`` the store files of ``earlier`` folders that
    ``folder`` lacks (only those of ``cases`` when given); returns how many came."""
    got = 0
    folder = Path(folder)
    for other in earlier:
        if not other.is_dir() or (folder.exists() and other.resolve() == folder.resolve()):
            continue
        for src in sorted(other.glob(f"*{SUFFIX}")):
            if cases is not None and not any(is_case_file(src.name, c) for c in cases):
                continue
            if (folder / src.name).exists():
                continue
            folder.mkdir(parents=True, exist_ok=True)
            dest = inside(folder, src.name)
            try:
                os.link(src, dest)
            except OSError:
                import shutil

                with atomic_path(dest) as tmp:
                    shutil.copyfile(src, tmp)
            got += 1
    return got
