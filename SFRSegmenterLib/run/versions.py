"""The version of the code that computes each stage of ``sfr run``: part of every stage key.

A stage key (:func:`.cache.make_key`) hashes a stage's inputs and settings.  It cannot see the
code, so an upgrade that changes what a stage computes *without* a new setting would hand back
an earlier run's outputs.  The version below is hashed into every key of its kind.

DEVELOPERS: bump a stage's number in the same commit that changes what it computes (its
outputs, their meaning or its file layout) without adding a setting to its key.  Bumping a
stage makes every later stage recompute too (their keys include its key).  Changes that leave
the outputs identical (refactoring, messages, speed) need no bump.

History (one line per bump):
    finetune 2: the stage-F head and BatchNorm fix; SAM models of version 1 are never reused.
    finetune 3: the decoder's class offsets start at the log class priors (prior_bias).
    finetune 4: the crop is cut to the labeled cases only (SFR+ rounds keep round 0's windows), a
        warm start keeps its source model's crop.
    pseudolabel 2: a frozen encoder's embeddings are decoded as float16 (as stored and as stage F
        trains on them).
    confidence 2: the flagged slices are spread out (confidence.FLAG_SPREAD).
"""

from __future__ import annotations

#: ``{stage kind: version}``.  A key's kind is its first part (``make_key("finetune", ...)``);
#: the per-case keys of a stage use its own number.
STAGE_VERSIONS = {
    "stitch": 1,
    "finetune": 4,
    "pseudolabel": 2,
    "retrain": 1,
    "confidence": 2,
    "metrics": 1,
}

#: Per-case keys and the stage whose code computes them.
CASE_KINDS = {"pseudo-case": "pseudolabel", "confidence-case": "confidence"}


def stage_version(kind: str) -> int:
    """The code version of stage ``kind`` (or of the stage a per-case kind belongs to)."""
    stage = CASE_KINDS.get(kind, kind)
    try:
        return STAGE_VERSIONS[stage]
    except KeyError:
        raise KeyError(f"stage kind {kind!r} has no entry in run/versions.py STAGE_VERSIONS") from None
