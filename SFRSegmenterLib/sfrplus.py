"""SFR+: which cases are trusted, when the rounds stop, and what each round records.

The confidence stage of a run stores *measurements* per case (confidence, size of the predicted
structure, voxel volume; :mod:`.run.pipeline`); the trust decision is made here, from those
measurements, every time it is needed, so changing the rule re-predicts nothing and a cached
stage never holds a decision.

* :class:`TrustPolicy`: a rule that says whether a case's V-Net label may train SAM in the next
  round.  Register another with :func:`register_policy` (``TRUST_POLICIES`` is the list of names);
  :class:`ConfidenceAndSize` is the default: Eq. 8 of the SFR+ paper (mean max-softmax >= tau)
  plus our structure guard (docs/run.md).
* :func:`drifted`: the drift stop: a round whose structures moved away from the labeled size.
* :class:`RoundRecord` / :class:`CaseRound`: a round of ``rounds.json``, typed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import confidence as conf_mod

# --------------------------------------------------------------------------- trust


@dataclass(frozen=True)
class TrustContext:
    """What a rule may compare a case with: the labeled structures' volumes (mm^3)."""

    labeled_mm3: tuple


class TrustPolicy:
    """Decides from a case's measurements (a ``cases.json`` entry of the confidence stage, or an
    entry of ``sfr review``) whether its V-Net label is trusted.  Subclasses set ``name`` and
    implement :meth:`from_config` (the settings it takes from a run's ``RunConfig``) and
    :meth:`trusted`."""

    name = ""

    @classmethod
    def from_config(cls, cfg) -> "TrustPolicy":
        raise NotImplementedError

    def trusted(self, entry: dict, context: TrustContext) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        """Its settings as the log shows them (``tau 0.985``)."""
        return self.name

    def decide(self, entries: dict, context: TrustContext) -> dict:
        """``{case: trusted}`` for every entry."""
        return {case: bool(self.trusted(entry, context)) for case, entry in entries.items()}


class ConfidenceAndSize(TrustPolicy):
    """Trusted: confidence >= ``tau`` (Eq. 8) and a predicted structure of at least
    ``min_structure`` x the smallest labeled structure, by physical volume (0: the paper's rule)."""

    name = "confidence"

    def __init__(self, tau: float = conf_mod.TAU, min_structure: float = conf_mod.MIN_STRUCTURE_FRACTION):
        self.tau = tau
        self.min_structure = min_structure

    @classmethod
    def from_config(cls, cfg) -> "ConfidenceAndSize":
        return cls(cfg.tau, cfg.min_structure)

    def trusted(self, entry: dict, context: TrustContext) -> bool:
        if not conf_mod.is_trusted(entry["confidence"], self.tau):
            return False
        if not self.min_structure:
            return True
        min_voxels = self.min_structure * min(context.labeled_mm3) / float(entry["voxel_mm3"])
        return entry["foreground_voxels"] >= min_voxels

    def describe(self) -> str:
        return f"tau {self.tau}"


TRUST_POLICIES: dict[str, Callable] = {ConfidenceAndSize.name: ConfidenceAndSize}
DEFAULT_POLICY = ConfidenceAndSize.name


def register_policy(cls) -> None:
    TRUST_POLICIES[cls.name] = cls


def build_policy(cfg, name: str = DEFAULT_POLICY) -> TrustPolicy:
    """The policy ``name`` with its settings from a run's configuration."""
    if name not in TRUST_POLICIES:
        raise ValueError(f"unknown trust policy {name!r} (choose from {', '.join(TRUST_POLICIES)})")
    return TRUST_POLICIES[name].from_config(cfg)


# --------------------------------------------------------------------------- rounds


@dataclass
class CaseRound:
    """One case in one round."""

    confidence: float
    trusted: bool
    dice: float | None = None  # the V-Net label vs hidden ground truth
    sam_dice: float | None = None  # SAM's pseudo-label vs hidden ground truth
    confidence_change: float | None = None  # vs the round before
    was_trusted: bool | None = None

    def to_json(self) -> dict:
        out = {"confidence": self.confidence, "trusted": self.trusted}
        for name in ("dice", "sam_dice", "confidence_change", "was_trusted"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


@dataclass
class RoundRecord:
    """One round of ``rounds.json``."""

    round: int
    sam_trained_with_pseudo: list
    retrained_with: list
    trusted: list
    moved_to_trusted: list
    moved_to_untrusted: list
    mean_confidence: float
    cases: dict  # {case: CaseRound}
    structure_ratio: float | None = None  # median predicted / median labeled structure volume
    mean_dice: float | None = None
    mean_sam_dice: float | None = None
    drift: bool = False
    stopped: str | None = None

    def to_json(self) -> dict:
        out = {"round": self.round, "sam_trained_with_pseudo": self.sam_trained_with_pseudo,
               "retrained_with": self.retrained_with, "trusted": self.trusted,
               "moved_to_trusted": self.moved_to_trusted, "moved_to_untrusted": self.moved_to_untrusted,
               "mean_confidence": self.mean_confidence,
               "cases": {c: row.to_json() for c, row in self.cases.items()}}
        for name in ("structure_ratio", "mean_dice", "mean_sam_dice"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.drift:
            out["drift"] = True
        if self.stopped:
            out["stopped"] = self.stopped
        return out

    def summary(self, policy: TrustPolicy) -> str:
        """The round's log line."""
        return (f"round {self.round}: {len(self.trusted)}/{len(self.cases)} cases trusted ({policy.describe()}), "
                f"mean confidence {self.mean_confidence:.4f}"
                + (f", mean Dice {self.mean_dice:.4f}" if self.mean_dice is not None else "")
                + (f"; moved to trusted: {', '.join(self.moved_to_trusted)}" if self.moved_to_trusted else "")
                + (f"; moved out: {', '.join(self.moved_to_untrusted)}" if self.moved_to_untrusted else ""))


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 6) if values else None


def round_record(r: int, entries: dict, trusted: dict, before: "RoundRecord | None", labeled_mm3,
                 retrained: list, sam_extra: list) -> RoundRecord:
    """The record of round ``r`` from the confidence stage's entries and the trust decisions."""
    cases = {}
    for c, e in entries.items():
        row = CaseRound(confidence=e["confidence"], trusted=trusted[c], dice=e.get("dice"), sam_dice=e.get("sam_dice"))
        if before is not None and c in before.cases:
            row.confidence_change = round(e["confidence"] - before.cases[c].confidence, 6)
            row.was_trusted = before.cases[c].trusted
        cases[c] = row
    rec = RoundRecord(
        round=r, sam_trained_with_pseudo=sorted(sam_extra), retrained_with=sorted(retrained),
        trusted=sorted(c for c in entries if trusted[c]),
        moved_to_trusted=sorted(c for c, row in cases.items() if row.was_trusted is False and row.trusted),
        moved_to_untrusted=sorted(c for c, row in cases.items() if row.was_trusted and not row.trusted),
        mean_confidence=round(float(np.mean([e["confidence"] for e in entries.values()])), 6), cases=cases,
        mean_dice=_mean(row.dice for row in cases.values()),
        mean_sam_dice=_mean(row.sam_dice for row in cases.values()),
    )
    mm3 = [e.get("structure_mm3") for e in entries.values()]
    if mm3 and all(v is not None for v in mm3) and labeled_mm3:
        rec.structure_ratio = round(float(np.median(mm3)) / float(np.median(labeled_mm3)), 6)
    return rec


def drifted(kept: RoundRecord, new: RoundRecord) -> bool:
    """The drift stop: ``new`` moved the structures away from the labeled size (``kept`` is kept)."""
    return conf_mod.structure_drift(kept.structure_ratio, new.structure_ratio)


def drift_warning(kept: RoundRecord, new: RoundRecord) -> str:
    return (f"WARNING: SFR+ round {new.round}: the predicted structures drifted away from the labeled ones "
            f"(median {new.structure_ratio:.2f} x the labeled structure, round {kept.round}: "
            f"{kept.structure_ratio:.2f} x); the round probably made the labels worse, so the results of "
            f"round {kept.round} are kept and the rounds stop (rounds.json records both)")


def why_stop(trusted: dict) -> str | None:
    """Why no further round helps: none trusted (it would repeat the last) or all trusted."""
    if not any(trusted.values()):
        return "no trusted case"
    if all(trusted.values()):
        return "all cases trusted"
    return None


def stop_message(reason: str, policy: TrustPolicy) -> str:
    """:func:`why_stop`'s reason as the log says it."""
    if reason == "no trusted case":
        return f"no case is trusted ({policy.describe()})"
    return "every case is trusted" if reason == "all cases trusted" else reason


__all__ = ["TrustPolicy", "ConfidenceAndSize", "TRUST_POLICIES", "register_policy", "build_policy", "TrustContext",
           "CaseRound", "RoundRecord", "round_record", "drifted", "drift_warning", "why_stop", "stop_message"]
