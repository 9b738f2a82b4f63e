"""The re-training loop: a 3D network trained on labeled crops + unlabeled crops (SSL method) +
SAM pseudo-labels (independent switch), single process or data-parallel under ``torchrun``.

Everything random is derived from (seed, iteration, slot): crops, augmentation, teacher noise and
dropout.  Hence a resumed run equals an uninterrupted one, and N processes that split the global
batch compute the same gradients as one process (exactly, up to float summation order, for
networks whose normalisation does not mix samples; batch norm is synchronised on GPUs).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from .. import events
from ..collapse import ClassBalance
from .names import AUGMENT_NAMES
from ..device import describe_device, resolve_device
from ..errors import Cancelled, SFRError
from ..io import atomic_path, check_outputs, write_json_atomic
from ..manifest import Project
from ..shard import dist_info as _dist_info
from ..training import check_finite_loss, check_finite_weights, check_same_run, differences, read_state, save_due
from . import data as D
from .networks import build_network, count_parameters, init_output_bias, required_multiple
from .ssl import SSL_METHODS, StepContext, build_method, seg_loss

from .names import FORMAT, MODEL_FILE  # noqa: F401 (public here too)

CHECKPOINT_FILE = "checkpoint.pt"
META_FILE = "meta.json"
from .config import LA_CROP, RetrainConfig  # noqa: F401 (RetrainConfig: public here too)


# --------------------------------------------------------------------------- helpers


#: How a user lowers stage R's learning rate (named when training diverges).
LR_OPTION = "sfr retrain --lr, sfr run --vnet-option lr=..."


def _seed_int(*parts) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def atomic_torch_save(obj, path: Path) -> None:
    """``torch.save`` through the engine's atomic writer (and its output guard)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _load_initial_weights(model, init_from: Path, cfg: RetrainConfig, num_classes: int) -> None:
    """Start from the weights of a trained model of the same architecture (warm start)."""
    from .inference import load_model

    trained = load_model(init_from, "cpu", network=cfg.network, num_classes=num_classes)
    try:
        model.load_state_dict(trained.state_dict(), strict=True)
    except RuntimeError:
        raise SFRError(f"cannot warm-start from this model: its {cfg.network} options differ "
                       f"({trained.sfr_meta.get('options')} vs {cfg.network_options()})", init_from) from None


def model_record(model, cfg: RetrainConfig, num_classes: int, classes, crop, extra: dict) -> dict:
    """What ``model.pt`` holds (plain types + tensors: loadable with weights_only=True)."""
    return {
        "format": FORMAT,
        "version": 1,
        "network": cfg.network,
        "in_channels": 1,
        "num_classes": int(num_classes),
        "classes": list(classes),
        "options": cfg.network_options(),
        "window": [int(c) for c in crop],
        "normalization": "zscore",
        "config": cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()},
        **extra,
    }


def _stop_requested(should_stop, world: int, device) -> bool:
    """``should_stop()``, agreed by every process under torchrun: one that is asked stops them all
    at the same iteration (each process must then be given a ``should_stop``)."""
    if should_stop is None:
        return False
    stop = bool(should_stop())
    if world > 1:
        flag = torch.tensor([int(stop)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stop = bool(flag.item())
    return stop


def class_priors(cases, num_classes: int) -> list:
    """Each class's fraction of the labeled cases' voxels."""
    counts = np.zeros(int(num_classes))
    for c in cases:
        counts += np.bincount(c.label.reshape(-1), minlength=num_classes)[:num_classes]
    return list(counts / max(1.0, counts.sum()))


# --------------------------------------------------------------------------- training


def retrain(
    project: Project,
    cfg: RetrainConfig,
    *,
    out_dir: Path,
    pseudo_dir: Path | None = None,
    resume: bool = False,
    should_stop: Callable[[], bool] | None = None,
    unlabeled_cases: list | None = None,
    sam_model_dir: Path | None = None,
    label_files: dict | None = None,
    init_from: Path | None = None,
) -> Path:
    """Train ``cfg.network`` on ``project`` and write ``out_dir/model.pt`` (+ ``meta.json``).

    ``pseudo_dir`` holds stage F's pseudo-labels, required when ``cfg.use_sam``; when
    ``sam_model_dir`` is given they must come from the SAM model there (same ``model_id``, not
    saved again since).  Every folder is explicit: only ``sfr retrain`` knows the project's default
    ones (:mod:`..project_folders`).  ``unlabeled_cases`` restricts the
    unlabeled cases used with pseudo-labels; ``label_files`` ``{case: label file}`` adds unlabeled
    cases with the given labels in their place (SFR+'s trusted cases with their V-Net labels).  ``should_stop()`` is polled before every iteration: when true the
    state is saved and :class:`Cancelled` raised;
    ``resume=True`` continues from ``out_dir/checkpoint.pt``; ``init_from`` (a model folder or
    ``model.pt`` of the same network, options and classes) gives the starting weights (warm start,
    :mod:`..run.warmstart`).  Returns ``out_dir``.
    """
    if cfg.ssl not in SSL_METHODS:
        raise SFRError(f"unknown SSL method {cfg.ssl!r} (choose from {', '.join(SSL_METHODS)})")
    if cfg.iterations < 1:
        raise SFRError(f"iterations must be at least 1, got {cfg.iterations}")
    if cfg.use_sam and pseudo_dir is None:
        raise SFRError("training with SAM pseudo-labels needs their folder (pseudo_dir); use_sam=False trains without")
    out_dir = Path(out_dir)
    check_outputs(out_dir / name for name in (CHECKPOINT_FILE, MODEL_FILE, META_FILE))  # before any work
    pseudo_dir = Path(pseudo_dir) if pseudo_dir is not None else None
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))

    rank, world, local_rank, dist_here = _dist_info(resolve_device(cfg.device).type)
    try:
        return _retrain(project, cfg, pseudo_dir, out_dir, resume, should_stop, unlabeled_cases, rank, world, local_rank,
                        sam_model_dir, dict(label_files or {}), init_from)
    finally:
        if dist_here and dist.is_initialized():
            dist.destroy_process_group()


def _retrain(project, cfg, pseudo_dir, out_dir, resume, should_stop, unlabeled_names, rank, world, local_rank,
             sam_model_dir=None, label_files=None, init_from=None):
    method = build_method(cfg.ssl, cfg)
    need_u = method.needs_unlabeled or cfg.use_sam
    for what, n in (("labeled", cfg.labeled_bs), ("unlabeled", cfg.unlabeled_bs if need_u else 0)):
        if n % world:
            raise SFRError(
                f"the global {what} batch {n} cannot be split over {world} processes; "
                f"use a multiple of {world}"
            )
    if cfg.labeled_bs < 1:
        raise SFRError("the labeled batch must be at least 1")

    device = resolve_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)

    labeled = D.load_labeled(project)
    unlabeled = []
    if need_u:
        cases = D.select_unlabeled(project, unlabeled_names)
        if not cases or (cfg.unlabeled_bs < 1):
            raise SFRError(
                f"{cfg.ssl}{' with SAM pseudo-labels' if cfg.use_sam else ''} needs unlabeled cases "
                "and an unlabeled batch of at least 1 (or use --ssl supervised --no-sam)",
                project.manifest_path,
            )
        unlabeled = D.load_unlabeled(project, cases, pseudo_dir, cfg.use_sam, sam_model_dir)
        if label_files and cfg.use_sam:
            unlabeled += D.load_with_labels(project, D.select_unlabeled(project, sorted(label_files)), label_files)
    num_classes = project.num_classes
    multiple = required_multiple(cfg.network)
    if cfg.crop is None:
        crop = D.auto_crop([c.image.shape for c in labeled + unlabeled], LA_CROP, multiple)
    else:
        crop = D.check_crop(cfg.crop, multiple)

    torch.manual_seed(cfg.seed)
    try:
        model = build_network(cfg.network, 1, num_classes, **cfg.network_options())
    except ValueError as exc:
        raise SFRError(str(exc)) from None
    priors = class_priors(labeled, num_classes)
    prior_bias = init_output_bias(model, priors) if cfg.prior_bias else None
    if init_from is not None:
        _load_initial_weights(model, Path(init_from), cfg, num_classes)
    model.to(device)
    method.setup(model)  # a teacher starts as a copy of the (warm-started) student
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    ckpt_path = out_dir / CHECKPOINT_FILE
    start = 0
    identity = {
        "network": cfg.network, "num_classes": num_classes, "ssl": cfg.ssl, "use_sam": cfg.use_sam,
        "crop": list(crop), "iterations": cfg.iterations, "seed": cfg.seed,
        "labeled_bs": cfg.labeled_bs, "unlabeled_bs": cfg.unlabeled_bs,
    }
    if resume and ckpt_path.exists():
        state = read_state(ckpt_path)
        check_same_run(differences(state.get("identity", {}), identity), ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        method.load_state_dict(state["method"])
        start = int(state["iteration"])

    if world > 1:
        if device.type == "cuda" and cfg.norm == "batchnorm":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    augment = cfg.resolved_augment(num_classes)
    if cfg.augment not in AUGMENT_NAMES:
        raise SFRError(f"unknown augmentation {cfg.augment!r} (choose from {', '.join(AUGMENT_NAMES)})")
    lr_step = cfg.resolved_lr_step()
    ramp_interval = cfg.resolved_ramp_interval()
    lb, ub = cfg.labeled_bs // world, (cfg.unlabeled_bs // world if need_u else 0)
    l_slots = list(range(rank * lb, (rank + 1) * lb))
    u_slots = list(range(rank * ub, (rank + 1) * ub))
    extra = {
        "labeled_cases": [c.name for c in labeled],
        "unlabeled_cases": [c.name for c in unlabeled],
        "pseudo_dir": str(pseudo_dir) if cfg.use_sam else None,
    }

    def save_checkpoint(iteration: int) -> None:
        check_finite_weights(_unwrap(model).state_dict().values(), "re-training", iteration, out_dir, LR_OPTION)
        if rank == 0:
            atomic_torch_save(
                {
                    "iteration": iteration,
                    "identity": identity,
                    "model": _unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "method": method.state_dict(),
                },
                ckpt_path,
            )
        if world > 1:
            dist.barrier()

    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        events.stage("retrain", "start", network=cfg.network, ssl=cfg.ssl, use_sam=cfg.use_sam,
                     parameters=count_parameters(_unwrap(model)), crop=list(crop), device=describe_device(device),
                     processes=world, labeled=len(labeled), unlabeled=len(unlabeled), start=start)
        events.log(
            f"re-training {cfg.network} ({count_parameters(_unwrap(model)):,} parameters) with {cfg.ssl}"
            f"{' + SAM pseudo-labels' if cfg.use_sam else ''}: {len(labeled)} labeled, {len(unlabeled)} "
            f"unlabeled cases, crop {crop[0]}x{crop[1]}x{crop[2]}, {cfg.iterations} iterations on "
            f"{describe_device(device)}" + (f" x {world} processes" if world > 1 else "")
            + (f", resuming at {start}" if start else "")
        )
    bar = events.Progress("retrain", cfg.iterations, start=start) if rank == 0 else None
    model.train()
    balance = ClassBalance("retrain", project.classes, cfg.iterations)
    t0 = time.monotonic()
    for it in range(start, cfg.iterations):
        if _stop_requested(should_stop, world, device):
            save_checkpoint(it)
            raise Cancelled(f"re-training stopped at iteration {it}; continue with resume")
        torch.manual_seed(_seed_int(cfg.seed, it, 3, rank))  # dropout
        lr = cfg.lr * cfg.lr_gamma ** (it // lr_step)
        for g in optimizer.param_groups:
            g["lr"] = lr
        x_l, y_l = D.make_batch(labeled, l_slots, crop, cfg.seed, it, D.LABELED, augment)
        x = torch.from_numpy(x_l)
        if ub:
            x_u, y_u = D.make_batch(unlabeled, u_slots, crop, cfg.seed, it, D.UNLABELED, augment)
            x = torch.cat([x, torch.from_numpy(x_u)])
        x = x.to(device)
        logits = model(x)
        logits_l = logits[:lb]
        loss_sup = seg_loss(logits_l, torch.from_numpy(y_l).to(device))
        loss = loss_sup
        logs = {"loss_sup": loss_sup.item()}
        watched, targets = logits_l, torch.from_numpy(y_l)
        if ub:
            logits_u = logits[lb:]
            if cfg.use_sam:
                watched, targets = logits, torch.cat([targets, torch.from_numpy(y_u)])
                loss_sam = seg_loss(logits_u, torch.from_numpy(y_u).to(device))
                loss = loss + cfg.sam_weight * loss_sam
                logs["loss_sam"] = loss_sam.item()
            ctx = StepContext(
                iteration=it, iterations=cfg.iterations, x_u=x[lb:], logits_u=logits_u,
                sample_seeds=[_seed_int(cfg.seed, it, 2, s) for s in u_slots], rampup_interval=ramp_interval,
            )
            unsup, mlogs = method.unsupervised_loss(ctx)
            if unsup is not None:
                loss = loss + unsup
            logs.update(mlogs)
        value = check_finite_loss(loss.detach(), "re-training", it, out_dir, LR_OPTION)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.after_step(_unwrap(model), it)
        done = it + 1
        logs.update(balance.update(it, watched, targets.to(watched.device)))
        if bar is not None:
            bar.update(done, loss=value, lr=lr, **logs)
        if save_due(done, cfg.save_every, cfg.iterations) and done < cfg.iterations:  # the last one below
            save_checkpoint(done)
    save_checkpoint(cfg.iterations)
    if rank == 0:
        record = model_record(model, cfg, num_classes, project.classes, crop, extra)
        atomic_torch_save(record, out_dir / MODEL_FILE)
        meta = {k: v for k, v in record.items() if k != "state_dict"}
        meta.update(parameters=count_parameters(_unwrap(model)), seconds=round(time.monotonic() - t0, 2),
                    processes=world, device=describe_device(device), class_balance=balance.summary(),
                    class_priors=[round(float(v), 5) for v in priors], prior_bias=prior_bias)
        write_json_atomic(out_dir / META_FILE, meta)
        events.stage("retrain", "done", model=str(out_dir / MODEL_FILE))
    if world > 1:
        dist.barrier()
    return out_dir
