"""Option values checked before any work starts: one table of ranges, one line per bad value.

:data:`RULES` names every numeric setting of the engine (command-line options by their
``argparse`` name, stage configuration fields by their dataclass name: they share names) with its
range.  :func:`check_args` checks a parsed command line (``sfr`` calls it before any command
runs); :func:`check_options` checks ``--sam-option``/``--vnet-option`` values against the stage
configuration's field types and the same ranges, so ``sfr run`` refuses ``filters=0`` or
``filters=abc`` before its first stage, not hours later.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import SFRError

#: Largest seed numpy and torch accept.
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Rule:
    kind: str  # "int" or "float"
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself excluded
    hi_open: bool = False

    def problem(self, value) -> str | None:
        """Why ``value`` breaks the rule, or None."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be {'an integer' if self.kind == 'int' else 'a number'}"
        if self.kind == "int" and not float(value).is_integer():
            return "must be an integer"
        if not math.isfinite(value):
            return "must be a finite number"
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return f"must be {'>' if self.lo_open else '>='} {self.lo:g}" + self._upper_text()
        if self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)):
            return f"must be {'<' if self.hi_open else '<='} {self.hi:g}" + self._lower_text()
        return None

    def _upper_text(self) -> str:
        return "" if self.hi is None else f" and {'<' if self.hi_open else '<='} {self.hi:g}"

    def _lower_text(self) -> str:
        return "" if self.lo is None else f" and {'>' if self.lo_open else '>='} {self.lo:g}"


def _positive_int():
    return Rule("int", 1)


def _count():
    return Rule("int", 0)


def _fraction(hi_open=False):
    return Rule("float", 0.0, 1.0, hi_open=hi_open)


#: name -> range.  Command-line option names (argparse ``dest``) and stage config fields.
RULES = {
    # how long / how much
    "iterations": _positive_int(), "iterations_sam": _positive_int(), "iterations_vnet": _positive_int(),
    "batch_size": _positive_int(), "batch_size_sam": _positive_int(), "batch": _positive_int(), "window_batch": _positive_int(),
    "labeled_bs": _positive_int(), "unlabeled_bs": _count(), "save_every": _count(),
    "threads": _positive_int(), "rounds": _count(), "flag_k": _count(), "ua_passes": _positive_int(),
    "embedding_cache": _count(), "lr_step": _positive_int(), "warmup": _count(),
    # seeds
    "seed": Rule("int", 0, MAX_SEED),
    # geometry
    "crop": _positive_int(), "window": _positive_int(), "stride": _positive_int(), "grid": _positive_int(),
    "canvas": Rule("int", 16), "pad": _count(), "scale": Rule("float", 0.0, lo_open=True),
    # network
    "filters": _positive_int(), "lora_rank": _count(), "dropout": _fraction(hi_open=True),
    # optimisation
    "lr": Rule("float", 0.0, lo_open=True), "weight_decay": Rule("float", 0.0),
    "momentum": _fraction(hi_open=True), "poly_power": Rule("float", 0.0), "lr_gamma": Rule("float", 0.0, 1.0, lo_open=True),
    "ema_decay": _fraction(), "consistency": Rule("float", 0.0), "consistency_rampup": Rule("float", 0.0),
    "rampup_interval": Rule("float", 0.0, lo_open=True), "noise_std": Rule("float", 0.0), "noise_clip": Rule("float", 0.0),
    "self_training_threshold": _fraction(), "self_training_weight": Rule("float", 0.0),
    "sam_weight": Rule("float", 0.0), "bezier_p": _fraction(), "head_lr_scale": Rule("float", 0.0, lo_open=True),
    # inference and review
    "overlap": _fraction(hi_open=True), "pseudo_overlap": Rule("float", 0.0, 0.9),
    "tau": Rule("float", 0.0, 1.0, lo_open=True), "min_structure": Rule("float", 0.0),
    "voxel_threshold": _fraction(),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


#: Options whose range differs in one command: ``sfr retrain --batch LABELED UNLABELED`` (an
#: unlabeled batch of 0 trains supervised only).
#: Stage F saves at least every N iterations (stage R takes 0 as "only at the end").
COMMAND_RULES = {"retrain": {"batch": _count()}, "finetune": {"save_every": _positive_int()}}
#: The same per stage option flag.
STAGE_RULES = {"--sam-option": {"save_every": _positive_int()}}


def check_args(args) -> None:
    """Check every numeric option of a parsed command line against :data:`RULES`."""
    special = COMMAND_RULES.get(getattr(args, "command", None), {})
    for name, value in sorted(vars(args).items()):
        rule = special.get(name, RULES.get(name))
        if rule is None or value is None:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            problem = rule.problem(v)
            if problem:
                shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
                raise SFRError(f"{_flag(name)} {shown}: {problem}")


# --------------------------------------------------------------------------- stage options


def _expected(annotation: str, default) -> tuple:
    """(kinds, nullable) of a dataclass field from its annotation text and default."""
    text = str(annotation)
    nullable = "None" in text or default is None
    kinds = []
    for kind in ("bool", "int", "float", "str"):
        if kind in text.replace("Sequence[int]", "").replace("tuple", ""):
            kinds.append(kind)
    if "Sequence" in text or "tuple" in text or "list" in text:
        kinds.append("sequence")
    if not kinds and default is not None:
        kinds.append(type(default).__name__)
    return kinds, nullable


def _type_ok(value, kinds: list) -> bool:
    if isinstance(value, bool):
        return "bool" in kinds
    if isinstance(value, int):
        return bool({"int", "float"} & set(kinds))
    if isinstance(value, float):
        return "float" in kinds
    if isinstance(value, str):
        return "str" in kinds
    if isinstance(value, list):
        return "sequence" in kinds and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return False


_KIND_WORDS = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string",
               "sequence": "a list of integers, e.g. [96,96,96]"}


def check_options(cls, options: dict, flag: str) -> None:
    """Check ``--sam-option``/``--vnet-option`` KEY=VALUE pairs against ``cls``'s fields."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise SFRError(f"{flag}: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(fields))})")
    for name, value in options.items():
        f = fields[name]
        default = f.default if f.default is not dataclasses.MISSING else None
        kinds, nullable = _expected(f.type, default)
        label = f"{flag} {name}"
        if value is None:
            if not nullable:
                raise SFRError(f"{label}=null: a value is required")
            continue
        if kinds and not _type_ok(value, kinds):
            raise SFRError(f"{label}={_show(value)}: must be " + " or ".join(_KIND_WORDS.get(k, k) for k in kinds))
        rule = STAGE_RULES.get(flag, {}).get(name, RULES.get(name))
        if rule is not None and not isinstance(value, (str, bool)):
            for v in value if isinstance(value, list) else [value]:
                problem = rule.problem(v)
                if problem:
                    raise SFRError(f"{label}={_show(value)}: {problem}")
        choices = _choices().get(name)
        if choices and isinstance(value, str) and value not in choices:
            raise SFRError(f"{label}={_show(value)}: must be one of {', '.join(choices)}")
        if name == "crop" and isinstance(value, list) and len(value) != 3:
            raise SFRError(f"{label}={_show(value)}: must be three sizes [D,H,W]")


def _choices() -> dict:
    """Stage options whose value is one of a few names (checked before a run starts)."""
    from .retrain.names import AUGMENT_NAMES, NETWORK_NAMES, NORM_NAMES, SSL_NAMES
    from .sam.preprocess import METHODS as PREPROCESS_METHODS

    return {"augment": AUGMENT_NAMES, "preprocess": PREPROCESS_METHODS, "norm": NORM_NAMES,
            "network": NETWORK_NAMES, "ssl": SSL_NAMES}


def _show(value) -> str:
    import json

    try:
        return json.dumps(value)[:60]
    except (TypeError, ValueError):
        return repr(value)[:60]
