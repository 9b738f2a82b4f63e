"""Stage R's configuration (``RetrainConfig``), importable without torch: the command line reads
its defaults from here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

#: The paper's schedule, which shorter or longer runs scale proportionally.
PAPER_ITERATIONS, PAPER_LR_STEP, PAPER_RAMP_INTERVAL = 6000, 2500, 150
LA_CROP = (80, 112, 112)


@dataclass
class RetrainConfig:
    network: str = "vnet"
    ssl: str = "mean_teacher"
    use_sam: bool = True
    sam_weight: float = 1.0
    iterations: int = PAPER_ITERATIONS
    crop: tuple | None = None  # (D, H, W); None: LA's 80x112x112, shrunk for small volumes
    labeled_bs: int = 2  # global batch (split over processes under torchrun)
    unlabeled_bs: int = 2
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step: int | None = None  # None: 2500, the paper's step, not scaled (a run < 2500 never decays)
    lr_gamma: float = 0.1
    ema_decay: float = 0.99
    consistency: float = 0.1
    consistency_rampup: float = 40.0
    rampup_interval: float | None = None  # None: 150 * iterations / 6000
    noise_std: float = 0.1
    noise_clip: float = 0.2
    ua_passes: int = 8
    self_training_threshold: float = 0.9
    self_training_weight: float = 1.0
    # rotflip (the paper's 90-degree in-plane rotations and flips) | crop | auto: crop for projects
    # with several structures (rotations and flips make left/right and anterior/posterior
    # structures look alike; bench/results/demo_ablation.md, stage R rows), rotflip for one structure
    augment: str = "auto"
    filters: int = 16
    norm: str = "batchnorm"
    dropout: float = 0.5
    residual: bool = True
    # the output layer's bias at the log class priors of the labeled cases (networks.init_output_bias)
    prior_bias: bool = True
    seed: int = 1337
    device: str = "auto"
    save_every: int = 500
    threads: int | None = None

    def resolved_lr_step(self) -> int:
        """lr x ``lr_gamma`` every this many iterations.  Default: the paper's 2500 as an absolute
        count (the reference code's ``0.1 ** (iteration // 2500)``), not scaled with ``iterations``:
        a scaled step decays the rate before a short run has learnt anything (the demo's
        measurement: docs/run.md, "sfr demo")."""
        if self.lr_step:
            return int(self.lr_step)
        return PAPER_LR_STEP

    def resolved_ramp_interval(self) -> float:
        if self.rampup_interval:
            return float(self.rampup_interval)
        return PAPER_RAMP_INTERVAL * self.iterations / PAPER_ITERATIONS

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["crop"] is not None:
            d["crop"] = [int(c) for c in d["crop"]]
        return d

    def resolved_augment(self, num_classes: int) -> str:
        if self.augment == "auto":
            return "crop" if int(num_classes) > 2 else "rotflip"
        return self.augment

    def network_options(self) -> dict:
        return {"filters": self.filters, "norm": self.norm, "dropout": self.dropout, "residual": self.residual}
