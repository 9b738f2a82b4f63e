"""SAM-family backbones for stage F: registry, LoRA, prompt-free segmenter, preprocessing.

The backbone registry (:mod:`.registry`, names, specs) is importable without torch (for the
command line); building a model imports torch: ``from SFRSegmenterLib.sam import build_segmenter``.
"""

from .build import build_segmenter, count_parameters
from .registry import BACKBONE_NAMES, BACKBONES, USER_BACKBONES, BackboneSpec, get_spec

__all__ = ["BACKBONE_NAMES", "BACKBONES", "USER_BACKBONES", "BackboneSpec", "build_segmenter", "count_parameters",
           "get_spec"]
