"""Semi-supervised methods as plug-ins, and the losses they share.

A method sees the student's logits on the unlabeled crops and may run its own forwards (a
teacher); it returns its unsupervised loss term.  The trainer adds the supervised term on the
labeled crops and, independently of the method, the SAM pseudo-label term (``use_sam``).

Methods (``SSL_METHODS``):

* ``supervised``: no unsupervised term (the lower bound; with ``use_sam`` it is "SAM
  pseudo-labels as extra labels").
* ``self_training``: the student's own confident predictions (max softmax >= threshold) on the
  unlabeled crops are its cross-entropy targets, weight ramped up like MT.
* ``mean_teacher``: teacher = EMA of the student (decay 0.99; ``alpha = min(1 - 1/(step + 1),
  decay)``), teacher input noise ``clamp(N(0, 0.1), -0.2, 0.2)``, softmax-MSE consistency with
  weight ``0.1 * sigmoid_rampup(iter // interval, 40)`` (interval 150 for 6000 iterations).
* ``ua_mt``: mean teacher whose consistency is masked to voxels where the teacher is certain:
  ``T`` noisy stochastic teacher passes, entropy of the mean softmax below
  ``(0.75 + 0.25 * sigmoid_rampup(iter, iterations)) * ln(K)``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import dice_ce
from ..sparse import NOT_ANNOTATED
from .names import SSL_NAMES


# --------------------------------------------------------------------------- losses


def seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The paper's 0.5 * (cross-entropy + Dice), Dice per sample over the foreground classes
    (:func:`..losses.dice_ce`; per sample, so that data-parallel training matches one process).
    Voxels labelled 255 (not annotated, :mod:`..sparse`) count in neither term; a target without
    them gives the same numbers as before."""
    if bool((target == NOT_ANNOTATED).any()):
        return dice_ce(logits, target, ignore_index=NOT_ANNOTATED, batch_dice=False, include_background=False,
                       smooth=1.0)
    return dice_ce(logits, target, batch_dice=False, include_background=False, smooth=1.0)


def sigmoid_rampup(current: float, length: float) -> float:
    """exp(-5 (1 - t)^2) with t = current / length clipped to [0, 1] (Laine & Aila 2017)."""
    if length <= 0:
        return 1.0
    t = min(max(float(current), 0.0), float(length)) / float(length)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Voxel-wise squared difference of the softmaxes (teacher detached)."""
    return (torch.softmax(student_logits, 1) - torch.softmax(teacher_logits.detach(), 1)) ** 2


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float, step: int) -> float:
    """teacher = alpha * teacher + (1 - alpha) * student, alpha = min(1 - 1/(step + 1), decay).

    ``step`` counts optimisation steps from 0, so the first update copies the student.  Floating
    buffers (batch-norm running statistics) are left to the teacher's own forwards.  Returns alpha.
    """
    alpha = min(1.0 - 1.0 / (step + 1), decay)
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
    return alpha


def teacher_noise(shape, seeds, clip: float, std: float, device) -> torch.Tensor:
    """clamp(N(0, std), -clip, clip), one seeded generator per sample (reproducible, DDP-safe)."""
    parts = []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        parts.append(torch.randn((1, *shape[1:]), generator=g))
    return torch.clamp(torch.cat(parts) * std, -clip, clip).to(device)


# --------------------------------------------------------------------------- interface


@dataclass
class StepContext:
    """What a method sees at one training step."""

    iteration: int  # 0-based index of this step
    iterations: int  # total steps
    x_u: torch.Tensor  # unlabeled crops [B_u, 1, D, H, W]
    logits_u: torch.Tensor  # student logits on them (with grad)
    sample_seeds: list  # one int per unlabeled crop, for reproducible noise
    rampup_interval: float = 150.0
    extra: dict = field(default_factory=dict)


class SSLMethod:
    """Base class: subclasses set ``name``, ``needs_unlabeled`` and override what they use."""

    name = "supervised"
    needs_unlabeled = False

    def __init__(self, cfg):
        self.cfg = cfg

    def setup(self, student: nn.Module) -> None:
        """Called once with the (unwrapped) student before training."""

    def unsupervised_loss(self, ctx: StepContext) -> tuple:
        """``(loss or None, {name: float})``."""
        return None, {}

    def after_step(self, student: nn.Module, step: int) -> None:
        """Called after each optimiser step (step counted from 0)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def consistency_weight(self, ctx: StepContext) -> float:
        return self.cfg.consistency * sigmoid_rampup(
            ctx.iteration // max(ctx.rampup_interval, 1e-9), self.cfg.consistency_rampup
        )


class Supervised(SSLMethod):
    name = "supervised"


class SelfTraining(SSLMethod):
    name = "self_training"
    needs_unlabeled = True

    def unsupervised_loss(self, ctx):
        with torch.no_grad():
            prob = torch.softmax(ctx.logits_u.detach(), 1)
            conf, target = prob.max(1)
            mask = (conf >= self.cfg.self_training_threshold).to(prob.dtype)
        ce = F.cross_entropy(ctx.logits_u, target, reduction="none")
        loss = (ce * mask).sum() / mask.numel()
        w = self.cfg.self_training_weight * sigmoid_rampup(
            ctx.iteration // max(ctx.rampup_interval, 1e-9), self.cfg.consistency_rampup
        )
        return w * loss, {"st_loss": loss.item(), "st_weight": w, "st_kept": float(mask.mean())}


class MeanTeacher(SSLMethod):
    name = "mean_teacher"
    needs_unlabeled = True

    def setup(self, student):
        self.teacher = copy.deepcopy(student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.train()  # as in the reference: dropout and batch statistics in the teacher

    def teacher_logits(self, ctx):
        noise = teacher_noise(ctx.x_u.shape, ctx.sample_seeds, self.cfg.noise_clip, self.cfg.noise_std, ctx.x_u.device)
        with torch.no_grad():
            return self.teacher(ctx.x_u + noise)

    def unsupervised_loss(self, ctx):
        t = self.teacher_logits(ctx)
        cons = softmax_mse(ctx.logits_u, t).mean()
        w = self.consistency_weight(ctx)
        return w * cons, {"consistency": cons.item(), "cons_weight": w}

    def after_step(self, student, step):
        ema_update(self.teacher, student, self.cfg.ema_decay, step)

    def state_dict(self):
        return {"teacher": self.teacher.state_dict()}

    def load_state_dict(self, state):
        self.teacher.load_state_dict(state["teacher"])


class UAMeanTeacher(MeanTeacher):
    name = "ua_mt"

    def unsupervised_loss(self, ctx):
        k = ctx.logits_u.shape[1]
        passes = max(1, int(self.cfg.ua_passes))
        with torch.no_grad():
            mean = 0
            for t in range(passes):
                seeds = [s * 131 + t + 1 for s in ctx.sample_seeds]
                noise = teacher_noise(ctx.x_u.shape, seeds, self.cfg.noise_clip, self.cfg.noise_std, ctx.x_u.device)
                mean = mean + torch.softmax(self.teacher(ctx.x_u + noise), 1)
            mean = mean / passes
            uncertainty = -(mean * torch.log(mean + 1e-6)).sum(1, keepdim=True)
            t_logits = self.teacher_logits(ctx)
            threshold = (0.75 + 0.25 * sigmoid_rampup(ctx.iteration, ctx.iterations)) * math.log(k)
            mask = (uncertainty < threshold).to(mean.dtype)
        dist = softmax_mse(ctx.logits_u, t_logits)
        cons = (mask * dist).sum() / (k * mask.sum() + 1e-16)
        w = self.consistency_weight(ctx)
        return w * cons, {"consistency": cons.item(), "cons_weight": w, "certain": float(mask.mean())}


#: The built-in methods, under the names ``retrain/names.py`` lists once for the command line
#: (adding a method: its class here, its ``name`` in ``SSL_NAMES``).
SSL_METHODS: dict[str, Callable] = {cls.name: cls for cls in (Supervised, SelfTraining, MeanTeacher, UAMeanTeacher)}
if tuple(SSL_METHODS) != SSL_NAMES:  # pragma: no cover (a contributor's slip, caught at import)
    raise ImportError(f"retrain/names.py SSL_NAMES {SSL_NAMES} != the built-in methods {tuple(SSL_METHODS)}")


def register_method(name: str, cls) -> None:
    SSL_METHODS[name] = cls


def build_method(name: str, cfg) -> SSLMethod:
    if name not in SSL_METHODS:
        raise ValueError(f"unknown SSL method {name!r} (choose from {', '.join(SSL_METHODS)})")
    return SSL_METHODS[name](cfg)
