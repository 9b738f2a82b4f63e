"""SAM-family backbones for stage F: registry, LoRA, prompt-free segmenter, preprocessing."""

from .registry import BACKBONES, BackboneSpec, build_segmenter, count_parameters, get_spec  # noqa: F401
