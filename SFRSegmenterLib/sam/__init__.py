"""SAM-family backbones for stage F: registry, LoRA, prompt-free segmenter, preprocessing.

``BACKBONE_NAMES`` is importable without torch (for the command line); the rest is loaded on
first use: ``from SFRSegmenterLib.sam import build_segmenter``.
"""

#: Names accepted by ``--backbone`` (the registry in :mod:`.registry` defines each).
BACKBONE_NAMES = ("lite_medsam", "vit_b", "vit_l", "vit_h", "medsam_vit_b", "tiny_test")

_LAZY = ("BACKBONES", "BackboneSpec", "build_segmenter", "count_parameters", "get_spec")


def __getattr__(name):
    if name in _LAZY:
        from . import registry

        return getattr(registry, name)
    raise AttributeError(name)
