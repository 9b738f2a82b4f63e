"""What a run depends on (:class:`RunConfig`, saved as ``runs/<id>/config.json``) and its
translation to the stage configurations.

The ``sfr run`` command line is parsed into a :class:`RunConfig` by ``commands/run.py``; the
Slicer module builds that command line through :mod:`SFRSegmenterLib.runcontrol`, which parses it
back with the same parser, so the command line exists once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .. import confidence as conf_mod
from ..errors import SFRError
from ..io import read_json
from ..runfolder import RunFolder

#: Default number of SFR+ rounds after the first SFR pass (see docs/run.md for the measurement).
DEFAULT_ROUNDS = 1
CONFIG_VERSION = 1
CONFIG_JSON = RunFolder.CONFIG


@dataclass
class RunConfig:
    """Everything a run depends on (written to ``runs/<id>/config.json``)."""

    sfr_plus: bool = False
    # the settings budget (run/budget.py BUDGETS); budget_choice: what it resolved to at run
    # creation (the budget, why, the concrete settings), applied under the explicit options
    budget: str = "auto"
    budget_choice: dict | None = None
    rounds: int | None = None  # SFR+ rounds after round 0; None: DEFAULT_ROUNDS with --sfr-plus
    tau: float = conf_mod.TAU
    # a case is trusted only if its predicted structure is >= this x the smallest labeled one (mm^3)
    min_structure: float = conf_mod.MIN_STRUCTURE_FRACTION
    backbone: str | None = None  # None: stage F's default
    checkpoint: str | None = None
    ssl: str | None = None  # None: stage R's default
    network: str | None = None
    device: str = "auto"
    # stage R, the pseudo-labels and the confidence stage on N torchrun processes (run/distributed.py);
    # "auto" (one per CUDA device when there are several) is resolved to a number when the run is created
    processes: "int | str" = "auto"
    iterations_sam: int | None = None
    iterations_vnet: int | None = None
    batch_size_sam: int | None = None
    pseudo_overlap: float | None = None  # None: stage F's default window overlap
    crop: list | None = None
    seed: int = 1337
    flag_k: int = conf_mod.FLAG_K
    voxel_threshold: float = conf_mod.VOXEL_THRESHOLD
    ranking: str = "mass"
    # SFR+: who is trusted (sfrplus.TRUST_POLICIES), what the V-Net of a round trains on
    trust: str = "estimate"
    trust_fraction: float = 0.5  # the "estimate" rule trusts this best fraction of the cases ...
    trust_floor: float = 0.5  # ... whose estimated Dice is at least this
    round_retrain: str = "all"  # sfrplus.RETRAIN_SCHEMES
    largest_component: bool = True  # every class keeps its largest connected component
    report: bool = True
    sam_options: dict = field(default_factory=dict)  # extra FinetuneConfig fields
    vnet_options: dict = field(default_factory=dict)  # extra RetrainConfig fields
    # the finished run whose models stage F and stage R start from (..warmstart); None: from scratch
    warm_start_from: str | None = None

    @property
    def resolved_rounds(self) -> int:
        if not self.sfr_plus:
            return 0
        return DEFAULT_ROUNDS if self.rounds is None else int(self.rounds)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["resolved_rounds"] = self.resolved_rounds
        d["config_version"] = CONFIG_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def load_run_config(run_path: Path) -> RunConfig:
    data = read_json(Path(run_path) / CONFIG_JSON, "run configuration", missing=None)
    if data is None:
        raise SFRError("run has no config.json (not a run folder)", run_path)
    return RunConfig.from_dict(data)


# --------------------------------------------------------------------------- stage configurations


def _filter_fields(cls, values: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names and v is not None}


def finetune_config(cfg: RunConfig):
    """Stage F's ``FinetuneConfig`` of a run (``--sam-option`` checked: names, types, ranges)."""
    from ..finetune import FinetuneConfig
    from ..validate import check_options

    values = {"backbone": cfg.backbone, "checkpoint": cfg.checkpoint, "iterations": cfg.iterations_sam,
              "batch_size": cfg.batch_size_sam, "seed": cfg.seed, "device": cfg.device, **cfg.sam_options}
    check_options(FinetuneConfig, cfg.sam_options, "--sam-option")
    return FinetuneConfig(**_filter_fields(FinetuneConfig, values))


def retrain_config(cfg: RunConfig):
    """Stage R's ``RetrainConfig`` of a run (``--vnet-option`` checked)."""
    from ..retrain import RetrainConfig
    from ..validate import check_options

    values = {"network": cfg.network, "ssl": cfg.ssl, "iterations": cfg.iterations_vnet,
              "crop": tuple(cfg.crop) if cfg.crop else None, "seed": cfg.seed, "device": cfg.device,
              **cfg.vnet_options}
    check_options(RetrainConfig, cfg.vnet_options, "--vnet-option")
    return RetrainConfig(**_filter_fields(RetrainConfig, values))


def review_settings(cfg: RunConfig) -> dict:
    """What the confidence stage's maps and flagged slices depend on (not which case is trusted)."""
    return {"k": cfg.flag_k, "voxel_threshold": cfg.voxel_threshold, "ranking": cfg.ranking}


def validate_config(cfg: RunConfig) -> None:
    """Build both stage configurations now, so a bad option fails before a run folder exists."""
    from .budget import check_budget, effective

    check_budget(cfg.budget)
    finetune_config(effective(cfg))
    rt_cfg = retrain_config(effective(cfg))
    if isinstance(cfg.processes, int):  # resolved for the device (commands/run.py)
        from .distributed import check_batches

        check_batches(cfg.processes, rt_cfg)
    if cfg.ranking not in conf_mod.RANKINGS:
        raise SFRError(f"unknown slice ranking {cfg.ranking!r} (choose from {', '.join(conf_mod.RANKINGS)})")
    if cfg.flag_k < 0:
        raise SFRError(f"--flag-k must be >= 0, got {cfg.flag_k}")
    from .. import sfrplus

    sfrplus.check_trust(cfg.trust, cfg.trust_fraction, cfg.trust_floor)
    if cfg.round_retrain not in sfrplus.RETRAIN_SCHEMES:
        raise SFRError(f"--round-retrain must be one of {', '.join(sfrplus.RETRAIN_SCHEMES)}, got {cfg.round_retrain!r}")


def stage_settings(stage_cfg) -> dict:
    """A stage configuration as its key sees it: where a stage runs does not change what it computes."""
    d = dataclasses.asdict(stage_cfg)
    for k in ("device", "save_every", "threads"):
        d.pop(k, None)
    return d
