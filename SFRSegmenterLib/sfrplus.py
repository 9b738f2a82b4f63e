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
from pathlib import Path
from typing import Callable, Protocol

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
        return bool(entry["foreground_voxels"] >= min_voxels)

    def describe(self) -> str:
        return f"tau {self.tau}"


class EstimatedQuality(TrustPolicy):
    """Trusted: among the best ``fraction`` of the cases by estimated Dice (:mod:`.quality`), with an
    estimate of at least ``floor`` and a structure that passes the size guard of ``fallback``.  A
    rank, not a threshold: the estimate orders cases better than it places them
    (bench/results/quality_estimate.md).  Cases without an estimate (no SAM pseudo-label to compare
    with) are judged by the paper's rule, ``fallback``."""

    name = "estimate"

    def __init__(self, fraction: float = 0.5, floor: float = 0.5, fallback: "ConfidenceAndSize | None" = None):
        self.fraction = fraction
        self.floor = floor
        self.fallback = fallback or ConfidenceAndSize()
        self.size_guard = ConfidenceAndSize(0.0, self.fallback.min_structure)

    @classmethod
    def from_config(cls, cfg) -> "EstimatedQuality":
        return cls(cfg.trust_fraction, cfg.trust_floor, ConfidenceAndSize.from_config(cfg))

    def _eligible(self, entry: dict, context: TrustContext) -> bool:
        return bool(entry["estimated_dice"] >= self.floor and self.size_guard.trusted(entry, context))

    def trusted(self, entry: dict, context: TrustContext) -> bool:  # one case alone: no rank to take
        if entry.get("estimated_dice") is None:
            return self.fallback.trusted(entry, context)
        return self._eligible(entry, context)

    def decide(self, entries: dict, context: TrustContext) -> dict:
        known = {c: e["estimated_dice"] for c, e in entries.items() if e.get("estimated_dice") is not None}
        out = {c: bool(self.fallback.trusted(e, context)) for c, e in entries.items() if c not in known}
        n_trusted = int(np.floor(self.fraction * len(known) + 1e-9))
        best = set(sorted(known, key=lambda c: (-known[c], c))[:n_trusted])
        out.update({c: c in best and self._eligible(entries[c], context) for c in known})
        return out

    def describe(self) -> str:
        return f"best {self.fraction:g} by estimated Dice" + (f", at least {self.floor:g}" if self.floor else "")


TRUST_POLICIES: dict[str, Callable] = {ConfidenceAndSize.name: ConfidenceAndSize,
                                       EstimatedQuality.name: EstimatedQuality}
#: The default of ``sfr run`` and the panel (``--trust``); ``confidence`` is the paper's rule.
DEFAULT_POLICY = EstimatedQuality.name


def register_policy(cls) -> None:
    TRUST_POLICIES[cls.name] = cls


def check_trust(name: str, fraction: float, floor: float) -> None:
    """One line naming the option for a trust setting out of range (before any work)."""
    from .errors import SFRError

    if name not in TRUST_POLICIES:
        raise SFRError(f"--trust must be one of {', '.join(TRUST_POLICIES)}, got {name!r}")
    if not 0 <= fraction <= 1:
        raise SFRError(f"--trust-fraction must be in [0, 1], got {fraction}")
    if not 0 <= floor <= 1:
        raise SFRError(f"--trust-floor must be in [0, 1], got {floor}")


def build_policy(cfg, name: "str | None" = None) -> TrustPolicy:
    """The policy ``name`` (default: the run's ``cfg.trust``) with its settings from a run's configuration."""
    name = name or getattr(cfg, "trust", DEFAULT_POLICY)
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
    estimated_dice: float | None = None  # :mod:`.quality`'s estimate of ``dice``

    def to_json(self) -> dict:
        out = {"confidence": self.confidence, "trusted": self.trusted}
        for name in ("estimated_dice", "dice", "sam_dice", "confidence_change", "was_trusted"):
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
    mean_estimated_dice: float | None = None
    drift: bool = False
    stopped: str | None = None
    published: bool = False
    why: str = ""  # why this round was published or not (set by :func:`choose_round`)

    def to_json(self) -> dict:
        out = {"round": self.round, "sam_trained_with_pseudo": self.sam_trained_with_pseudo,
               "retrained_with": self.retrained_with, "trusted": self.trusted,
               "moved_to_trusted": self.moved_to_trusted, "moved_to_untrusted": self.moved_to_untrusted,
               "mean_confidence": self.mean_confidence,
               "cases": {c: row.to_json() for c, row in self.cases.items()}}
        for name in ("structure_ratio", "mean_estimated_dice", "mean_dice", "mean_sam_dice"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.drift:
            out["drift"] = True
        if self.stopped:
            out["stopped"] = self.stopped
        out["published"] = self.published
        if self.why:
            out["why"] = self.why
        return out

    @classmethod
    def from_json(cls, d: dict) -> "RoundRecord":
        """A record of ``rounds.json`` read back (what a reader or a benchmark re-examines)."""
        fields = {f for f in cls.__dataclass_fields__ if f != "cases"}
        cases = {c: CaseRound(**{k: v for k, v in row.items() if k in CaseRound.__dataclass_fields__})
                 for c, row in d.get("cases", {}).items()}
        return cls(cases=cases, **{k: v for k, v in d.items() if k in fields})

    def summary(self, policy: TrustPolicy) -> str:
        """The round's log line."""
        return (f"round {self.round}: {len(self.trusted)}/{len(self.cases)} cases trusted ({policy.describe()}), "
                f"mean confidence {self.mean_confidence:.4f}"
                + (f", mean estimated Dice {self.mean_estimated_dice:.4f}" if self.mean_estimated_dice is not None else "")
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
        row = CaseRound(confidence=e["confidence"], trusted=trusted[c], dice=e.get("dice"), sam_dice=e.get("sam_dice"),
                        estimated_dice=e.get("estimated_dice"))
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
        mean_estimated_dice=_mean(row.estimated_dice for row in cases.values()),
    )
    mm3 = [e.get("structure_mm3") for e in entries.values()]
    if mm3 and all(v is not None for v in mm3) and labeled_mm3:
        rec.structure_ratio = float(f"{float(np.median(mm3)) / float(np.median(labeled_mm3)):.6g}")
    return rec


def drifted(kept: RoundRecord, new: RoundRecord) -> bool:
    """The drift stop: ``new`` moved the structures away from the labeled size (``kept`` is kept)."""
    return conf_mod.structure_drift(kept.structure_ratio, new.structure_ratio)


def drift_warning(kept: RoundRecord, new: RoundRecord) -> str:
    return (f"WARNING: SFR+ round {new.round}: the predicted structures drifted away from the labeled ones "
            f"(median {new.structure_ratio:.2f} x the labeled structure, round {kept.round}: "
            f"{kept.structure_ratio:.2f} x); the round probably made the labels worse, so it is not published "
            f"and the rounds stop (rounds.json records both)")


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


#: How much higher (Dice, 0-1) a later round's mean estimated Dice must be than the candidate's to
#: replace it.  The estimate errs by about 4 points per case (bench/results/quality_estimate.md),
#: about 1.3 points on the mean of 10 cases; a smaller lead is noise.  On six demo runs a later
#: round led round 0 by 0.6-4.0 estimated points while its true gain was -2.2..+2.8; every margin
#: between 1.3 and 3.8 points publishes round 0 where the round was worse and keeps the two real
#: gains (+1.1, +2.8) (bench/results/sfr_plus_demo_product.md; chosen on those same runs).
PUBLISH_MARGIN = 0.02


def choose_round(history: list, margin: float = PUBLISH_MARGIN) -> int:
    """Index of the round to publish, with every round's ``published`` and ``why`` set.

    Round 0 is the first candidate; each later round that did not drift replaces the candidate when
    its mean estimated Dice is higher by more than ``margin`` (every case's estimate compares it
    with a SAM that did not learn its V-Net label, :func:`run_rounds`, so rounds compare); a
    smaller lead keeps the earlier, so plain SFR is published unless a round is estimated clearly
    better.  Without estimates, the last round that did not drift (the paper's rule: the rounds'
    result is the last round's)."""
    best, reasons = 0, {0: "round 0 (SFR)"}
    for i, rec in enumerate(history[1:], start=1):
        if rec.drift:
            reasons[i] = "dropped: its structures drifted away from the labeled size"
            continue
        new, old = rec.mean_estimated_dice, history[best].mean_estimated_dice
        if new is None or old is None:
            reasons[i] = "no quality estimate to compare with: the paper's rule keeps the last round"
            best = i
            continue
        on = f"mean estimated Dice {new:.4f} vs {old:.4f} of round {history[best].round}"
        if new > old + margin:
            reasons[best] = f"dropped: round {rec.round} is estimated better ({on})"
            best, reasons[i] = i, on
        elif new > old:
            reasons[i] = f"dropped: {on}, a lead within the estimate's margin ({margin:.2f})"
        else:
            reasons[i] = f"dropped: {on}"
    for i, rec in enumerate(history):
        rec.published = i == best
        rec.why = ("published: " + reasons[i]) if i == best else reasons[i]
    return best


# --------------------------------------------------------------------------- the loop

#: What the V-Net of a round r >= 1 trains on besides the labeled cases: ``all`` unlabeled cases
#: (trusted ones with the kept round's V-Net label, the others with the new SAM pseudo-labels), or
#: the ``untrusted`` ones only (the paper's selective re-training).
RETRAIN_SCHEMES = ("all", "untrusted")


class RoundStages(Protocol):
    """The stages the SFR / SFR+ loop sequences.  :class:`SFRSegmenterLib.run.pipeline.Pipeline`
    provides them for ``sfr run`` (content-keyed, resumable); benchmarks drive the same class with
    their own settings.  Every folder is returned by one stage and handed to the next."""

    def finetune(self, r: int, extra_labels: dict) -> Path:
        """SAM fine-tuned on the labeled cases and ``{case: label file}``; the model folder."""

    def pseudolabel(self, r: int, sam_model: Path, cases: list) -> Path:
        """SAM pseudo-labels of ``cases``; the folder."""

    def retrain(self, r: int, pseudo: Path, pseudo_cases: list, sam_model: Path, label_files: dict) -> Path:
        """The V-Net trained with ``pseudo_cases``' pseudo-labels and ``{case: label file}``; the model folder."""

    def confidence(self, r: int, vnet: Path, sam_labels: dict) -> "tuple[Path, dict]":
        """Every unlabeled case predicted: the folder and ``{case: entry}``, each entry with its
        measurements and ``estimated_dice`` (None where it cannot be estimated) from the comparison
        with SAM's label ``sam_labels[case]``."""

    def label_file(self, confidence_dir: Path, case: str) -> Path:
        """The V-Net label of ``case`` in a confidence folder (also of a pseudo-label folder)."""


@dataclass
class RoundResult:
    """One round's folders and record."""

    confidence: Path
    vnet: Path
    record: RoundRecord


def run_rounds(stages: RoundStages, policy: TrustPolicy, context: TrustContext, cases: list, rounds: int,
               retrain_with: str = "all", log: Callable = print) -> "tuple[list, int]":
    """SFR (round 0) and ``rounds`` SFR+ rounds over ``stages``; ``(results, published index)``.

    Round r >= 1 fine-tunes SAM on the labeled cases plus the cases ``policy`` trusted in round
    r - 1 (with their V-Net labels), pseudo-labels the other cases with it, re-trains the V-Net
    (:data:`RETRAIN_SCHEMES`) and predicts every case again.  The quality estimate compares each
    case with SAM's label from the last SAM that was not trained on that case's V-Net label (round
    r's for the untrusted cases; the trusted ones keep theirs), so every round's estimates are
    comparable.  The rounds stop early when no case or every case is trusted, or when a round's
    structures drift; the published round is :func:`choose_round`'s."""
    if retrain_with not in RETRAIN_SCHEMES:
        raise ValueError(f"unknown re-training scheme {retrain_with!r} (choose from {', '.join(RETRAIN_SCHEMES)})")

    def record(r, entries, before, retrained, sam_extra):
        rec = round_record(r, entries, policy.decide(entries, context), before, context.labeled_mm3,
                           retrained, sam_extra)
        log(rec.summary(policy))
        return rec

    ft = stages.finetune(0, {})
    pl = stages.pseudolabel(0, ft, list(cases))
    rt = stages.retrain(0, pl, list(cases), ft, {})
    reference = {c: stages.label_file(pl, c) for c in cases}  # SAM's labels to compare with
    cf, entries = stages.confidence(0, rt, reference)
    results = [RoundResult(cf, rt, record(0, entries, None, list(cases), []))]
    for r in range(1, rounds + 1):
        last = results[-1]
        trusted = {c: last.record.cases[c].trusted for c in cases}
        stop = why_stop(trusted)
        if stop:
            log(f"SFR+ round {r}: {stop_message(stop, policy)}; stopping the rounds")
            last.record.stopped = stop
            break
        chosen = [c for c in cases if trusted[c]]
        untrusted = [c for c in cases if not trusted[c]]
        kept_labels = {c: stages.label_file(last.confidence, c) for c in chosen}
        ft = stages.finetune(r, kept_labels)
        pl = stages.pseudolabel(r, ft, untrusted)
        label_files = kept_labels if retrain_with == "all" else {}
        rt = stages.retrain(r, pl, untrusted, ft, label_files)
        reference.update({c: stages.label_file(pl, c) for c in untrusted})
        cf, entries = stages.confidence(r, rt, reference)
        rec = record(r, entries, last.record, sorted(untrusted + list(label_files)), chosen)
        results.append(RoundResult(cf, rt, rec))
        if drifted(last.record, rec):
            rec.drift, rec.stopped = True, "structure drift"
            log(drift_warning(last.record, rec))
            break
    published = choose_round([res.record for res in results])
    if len(results) > 1:
        log(f"SFR+: round {results[published].record.round} {results[published].record.why}")
    return results, published


__all__ = ["TrustPolicy", "ConfidenceAndSize", "EstimatedQuality", "TRUST_POLICIES", "DEFAULT_POLICY", "register_policy",
           "check_trust", "build_policy", "TrustContext", "choose_round", "RETRAIN_SCHEMES", "RoundStages", "RoundResult",
           "run_rounds",
           "CaseRound", "RoundRecord", "round_record", "drifted", "drift_warning", "why_stop", "stop_message"]
