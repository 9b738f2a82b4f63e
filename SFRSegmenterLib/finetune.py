"""Stage F: LoRA fine-tuning of a SAM-family model on stitched labeled volumes.

``finetune(project, cfg)`` trains on every labeled case (plus ``extra_labeled`` cases whose
pseudo-labels are trusted, SFR+), and saves into ``PROJECT/models/sam/``:

* ``sam_parts.pt``   the trained parts only: LoRA, prompt encoder, mask decoder (tensors);
* ``train_state.pt`` optimizer moments and iteration, used by ``resume``;
* ``sam-model.json`` metadata: backbone, base checkpoint + sha256, stitching layout and plan,
  classes, preprocessing, iterations, loss curve, ``model_id`` (a digest of the parts' values).

All three are written atomically every ``save_every`` iterations and at the end (metadata
last: it is the commit point).  Every random choice of iteration ``i`` comes from a generator
seeded with ``(seed, i)``, so a resumed run equals an uninterrupted one on CPU.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from . import events
from .clock import utcnow
from .collapse import ClassBalance
from .device import describe_device, resolve_device
from .errors import Cancelled, SFRError
from .io import atomic_path, check_outputs, read_image, read_json, read_label
from .io.outputs import move_own, remove_own
from .manifest import Project, write_json_atomic
from .project_folders import SAM_MODEL_META
from .sam import augment
from .sam.checkpoints import load_state_dict, sha256_file
from .sam.config import _RESUME_KEYS, FinetuneConfig, resolved_warmup  # noqa: F401 (FinetuneConfig: public here too)
from .sam.layout import Layout, resolve_layout
from .sam.loss import dice_ce_loss
from .sam.model import CLASS_BIAS, init_class_bias, set_grad_checkpointing, train_mode, trainable_parts, zero_started
from .sam.preprocess import METHODS as PREPROCESS_METHODS
from .sam.preprocess import normalize
from .sam import build_segmenter, count_parameters, get_spec
from .stitching import IGNORE_INDEX, stitch
from .training import check_finite_loss, check_finite_weights, check_same_run, differences, read_state, save_due

MODEL_META = SAM_MODEL_META  # one name, in project_folders.py
PARTS_FILE = "sam_parts.pt"
STATE_FILE = "train_state.pt"
PREV = ".prev"  # suffix of the previous save's files while a save is in progress
#: Every file a save writes, moves or removes in the model folder.
SAVED_FILES = (PARTS_FILE, STATE_FILE, MODEL_META, PARTS_FILE + PREV, STATE_FILE + PREV)
FORMAT = "sfr-sam-model"
#: 2: the decoder's parts hold ``mask_decoder.class_bias`` (version 1 parts load with it at zero)
FORMAT_VERSION = 2


@dataclass
class _Case:
    name: str
    image: np.ndarray  # normalised float32 [D, H, W]
    label: np.ndarray  # uint8 [D, H, W]
    source: str = "labeled"


#: How a user lowers stage F's learning rate (named when training diverges).
LR_OPTION = "sfr finetune --lr, sfr run --sam-option lr=..."


def _load_cases(project: Project, extra_labeled, method: str) -> list:
    cases = []
    triples = []
    for c in project.by_role("labeled"):
        if not c.label:
            raise SFRError(f"labeled case {c.name!r} has no label", project.manifest_path)
        triples.append((c.name, project.image_path(c), project.label_path(c), "labeled"))
    for name, image, label in extra_labeled or ():
        triples.append((name, Path(image), Path(label), "pseudo"))
    for name, image_path, label_path, source in triples:
        image = read_image(image_path)
        label = read_label(label_path, image, project.num_classes, sparse=source == "labeled")
        cases.append(_Case(name, normalize(image.array, method), np.ascontiguousarray(label.array, dtype=np.uint8), source))
    return cases


def _layout(cfg: FinetuneConfig, spec, shapes) -> Layout:
    canvas = cfg.canvas or spec.canvas
    if canvas != spec.canvas:
        raise SFRError(f"backbone {spec.name} takes a {spec.canvas} px canvas, not {canvas}")
    crop = tuple(cfg.crop) if cfg.crop else spec.default_crop
    if len(crop) != 3 or min(crop) < 1:
        raise SFRError(f"crop must be three positive sizes D H W, got {crop}")
    grid = spec.default_grid if cfg.grid is None else (None if cfg.grid == "native" else tuple(cfg.grid))
    layout = resolve_layout(canvas, crop, grid, cfg.scale, shapes, cut=not cfg.crop)
    try:
        layout.plan()
    except ValueError as exc:
        raise SFRError(f"cannot stitch crops of {layout.crop} on a {canvas} px canvas: {exc}") from None
    return layout


def sample_batch(cases: list, layout: Layout, plan, cfg: FinetuneConfig, iteration: int, stream: int = 0, size: "int | None" = None):
    """The training batch of ``iteration``: images ``[N, 3, S, S]``, labels ``[N, S, S]``."""
    rng = np.random.default_rng([int(cfg.seed), int(stream), int(iteration)])
    images, labels = [], []
    for _ in range(cfg.batch_size if size is None else size):
        case = cases[int(rng.integers(len(cases)))]
        img, lab = case.image, case.label
        if cfg.augment and cfg.orientation_augment:
            img, lab = augment.rot_flip_3d(img, lab, rng)
        img, lab = augment.random_crop(img, lab, layout.crop, rng)
        if cfg.augment and cfg.bezier_p > 0:
            img = augment.bezier_per_slice(img, rng, cfg.bezier_p)
        ci = stitch(img, plan, fill=0.0, mode="bilinear")
        cl = stitch(lab, plan, fill=IGNORE_INDEX, mode="nearest")
        if cfg.augment and cfg.orientation_augment:
            ci, cl = augment.rot_flip_2d(ci, cl, rng)
        images.append(ci)
        labels.append(cl)
    x = torch.from_numpy(np.concatenate(images).astype(np.float32))[:, None].expand(-1, 3, -1, -1)
    y = torch.from_numpy(np.concatenate(labels).astype(np.int64))
    return x.contiguous(), y


def cache_picks(cfg, iteration: int) -> np.ndarray:
    """The embedding-cache entries (of ``cfg.embedding_cache``) the batch of ``iteration`` trains on."""
    return np.random.default_rng([int(cfg.seed), 2, int(iteration)]).integers(int(cfg.embedding_cache),
                                                                                size=cfg.batch_size)


def drawn_entries(cfg, start: int = 0) -> list:
    """The cache entries iterations ``start`` .. ``cfg.iterations`` draw, sorted: the only ones
    worth computing (a short run draws a few of the cache's mosaics, a long one all of them)."""
    drawn, size = set(), int(cfg.embedding_cache)
    for it in range(int(start), int(cfg.iterations)):
        drawn.update(int(j) for j in cache_picks(cfg, it))
        if len(drawn) == size:
            break
    return sorted(drawn)


@torch.no_grad()
def build_embedding_cache(model, cases, layout, plan, cfg, device, bf16, entries=None):
    """Encoder outputs of the augmented mosaics ``entries`` (default: all ``cfg.embedding_cache``;
    frozen encoder only), each computed alone from its own seed: ``(embeddings, labels, {entry: row})``."""
    entries = list(range(cfg.embedding_cache)) if entries is None else list(entries)
    embs, labs = [], []
    bar = events.Progress("embed", len(entries))
    for n, j in enumerate(entries):
        x, y = sample_batch(cases, layout, plan, cfg, j, stream=1, size=1)
        with _autocast(device, bf16):
            emb = model.encode(x.to(device))
        embs.append(emb.float().cpu().to(torch.float16))
        labs.append(y)
        bar.update(n + 1)
    return torch.cat(embs), torch.cat(labs), {j: row for row, j in enumerate(entries)}


def label_priors(labels: torch.Tensor, k: int) -> list:
    """The fraction of each of ``k`` classes among the pixels of ``labels`` that carry a label
    (stitching padding and unannotated voxels, IGNORE_INDEX, left out)."""
    y = labels.reshape(-1).long()
    y = y[y != IGNORE_INDEX]
    counts = torch.bincount(y.clamp(0, k - 1), minlength=k)[:k].double()
    return (counts / max(1, int(y.numel()))).tolist()


#: mosaics sampled (their own random stream) to measure the class priors without a cache
PRIOR_SAMPLES = 8


def _autocast(device: torch.device, bf16: bool):
    if bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


def read_model_meta(model_dir: "str | Path") -> dict:
    path = Path(model_dir) / MODEL_META
    if not path.exists():
        raise SFRError("no fine-tuned SAM model here (run 'sfr finetune' first)", Path(model_dir))
    meta = read_json(path, "model metadata")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SFRError(f"not an SFR SAM model metadata file (format {FORMAT!r} expected)", path)
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise SFRError("model was saved by a newer SFR Segmenter; upgrade", path)
    return meta


def load_parts(model, path: Path) -> None:
    """Load saved trained parts into ``model``; keys and shapes must match exactly."""
    parts = load_state_dict(path)
    own = trainable_parts(model)
    if CLASS_BIAS in own and CLASS_BIAS not in parts:  # saved before the decoder had class offsets
        parts = {**parts, CLASS_BIAS: torch.zeros_like(own[CLASS_BIAS])}
    missing = sorted(set(own) - set(parts))
    unexpected = sorted(set(parts) - set(own))
    shapes = sorted(k for k in set(own) & set(parts) if own[k].shape != parts[k].shape)
    if missing or unexpected or shapes:
        bits = [f"{len(v)} {n}: {', '.join(v[:5])}" for n, v in
                (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if v]
        raise SFRError("saved parts do not fit the model; " + "; ".join(bits), path)
    model.load_state_dict(parts, strict=False)


def _load_initial_parts(model, init_dir: Path, meta: dict) -> str:
    """Load a fine-tuned model's parts as the starting point; returns its ``model_id``."""
    init = read_model_meta(init_dir)
    for key in ("backbone", "classes"):
        if init.get(key) != meta.get(key):
            raise SFRError(f"cannot warm-start from this SAM model: its {key} is {init.get(key)!r}, "
                           f"this fine-tuning's {meta.get(key)!r}", init_dir / MODEL_META)
    parts = init_dir / init.get("parts_file", PARTS_FILE)
    if not parts.exists() or sha256_file(parts) != init.get("parts_sha256"):
        raise SFRError("cannot warm-start: the model's parts do not match its metadata", parts)
    load_parts(model, parts)
    return str(init.get("model_id"))


def keep_crop_of(cfg: FinetuneConfig, init_from: "str | os.PathLike | None") -> FinetuneConfig:
    """``cfg`` with the crop of the model ``init_from`` (a warm start) unless ``cfg`` gives one: a
    warm start keeps the stitching of the model it continues, so the windows, and the frozen
    encoder's stored embeddings of every case (:mod:`.encoder_store`), stay valid."""
    if init_from is None or cfg.crop:
        return cfg
    return replace(cfg, crop=tuple(int(v) for v in read_model_meta(Path(init_from))["layout"]["crop"]))


def param_groups(model, head_lr_scale: float = 1.0) -> list:
    """The optimiser's parameter groups: one, or with ``head_lr_scale != 1`` a second holding the
    layers that start at zero (:func:`.sam.model.zero_started`) at ``lr * head_lr_scale``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if float(head_lr_scale) == 1.0:
        return [{"params": params}]
    heads = {id(p) for p in zero_started(model)}
    return [{"params": [p for p in params if id(p) not in heads]},
            {"params": [p for p in params if id(p) in heads], "lr_scale": float(head_lr_scale)}]


def content_digest(state: dict) -> str:
    """sha256 over the names, dtypes, shapes and values of a state dict (file-name independent)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def finetune(
    project: Project,
    cfg: FinetuneConfig,
    out_dir: "str | os.PathLike",
    resume: bool = False,
    should_stop: "Callable[[], bool] | None" = None,
    extra_labeled: "Sequence[tuple[str, Path, Path]]" = (),
    init_from: "str | os.PathLike | None" = None,
) -> Path:
    """Fine-tune ``cfg.backbone`` on the project's labeled cases into ``out_dir``; returns it.

    ``init_from``: a fine-tuned model folder (same backbone, LoRA rank and classes) whose trained
    parts are the starting point (warm start, :mod:`.run.warmstart`).

    ``out_dir`` is required: only ``sfr finetune`` knows the default ``PROJECT/models/sam``
    (:mod:`.project_folders`)."""
    out_dir = Path(out_dir)
    check_outputs(out_dir / name for name in SAVED_FILES)  # before any work (a user's file in --out)
    spec = get_spec(cfg.backbone)
    if cfg.iterations < 1 or cfg.batch_size < 1 or cfg.save_every < 1:
        raise SFRError("iterations, batch size and save interval must be >= 1")
    if not float(cfg.head_lr_scale) > 0:
        raise SFRError(f"head_lr_scale must be > 0, got {cfg.head_lr_scale}")
    if cfg.warmup is not None and cfg.warmup < 0:
        raise SFRError(f"warm-up must be >= 0 iterations, got {cfg.warmup}")
    cfg = replace(cfg, warmup=resolved_warmup(cfg))  # the metadata and resume check record the number
    if cfg.lora_rank < 0:
        raise SFRError(f"LoRA rank must be >= 0 (0: frozen encoder), got {cfg.lora_rank}")
    if cfg.preprocess is not None and cfg.preprocess not in PREPROCESS_METHODS:
        raise SFRError(f"unknown intensity preprocessing {cfg.preprocess!r} (choose from {', '.join(PREPROCESS_METHODS)})")
    if cfg.embedding_cache and cfg.lora_rank != 0:
        raise SFRError("cached embeddings need a frozen encoder: use LoRA rank 0 with the embedding cache")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = resolve_device(cfg.device)
    bf16 = (device.type == "cuda") if cfg.bf16 is None else bool(cfg.bf16)
    events.stage("finetune", "start", backbone=cfg.backbone, device=str(device))
    events.log(f"fine-tuning {spec.description} on {describe_device(device)}" + (" with bf16" if bf16 else ""))

    preprocess = cfg.preprocess or spec.preprocess
    cases = _load_cases(project, extra_labeled, preprocess)
    if not cases:
        raise SFRError("no labeled case to fine-tune on (mark at least one case 'labeled')", project.manifest_path)
    cfg = keep_crop_of(cfg, init_from)
    # the crop is cut to the *labeled* cases' extent: the same in every SFR+ round (its pseudo-labeled
    # cases leave the windows, and so the stored embeddings, as they were)
    layout = _layout(cfg, spec, [c.image.shape for c in cases if c.source == "labeled"])
    plan = layout.plan()

    prev = None
    if resume and (out_dir / MODEL_META).exists():
        prev = read_model_meta(out_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # LoRA initialisation
        model = build_segmenter(
            cfg.backbone, cfg.checkpoint, project.num_classes, cfg.lora_rank, cfg.download,
            expected_sha256=prev.get("checkpoint_sha256") if prev else None,
        )
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **model.meta,
        "preprocess": preprocess,
        "classes": list(project.classes),
        "layout": layout.to_dict(),
        "plan": plan.to_dict(),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "parameters": count_parameters(model),
        "labeled_cases": [c.name for c in cases if c.source == "labeled"],
        "extra_labeled": [c.name for c in cases if c.source == "pseudo"],
        "project": project.name or project.root.name,
        "created": utcnow(),
        "iterations": cfg.iterations,
        "iterations_done": 0,
        "loss_curve": [],
        "train_seconds": 0.0,
    }
    start = 0
    state = None
    if prev is not None:
        # a model saved before a setting existed was trained with its default
        saved = {"head_lr_scale": 1.0, **prev.get("config", {})}
        diffs = differences(saved, meta["config"], _RESUME_KEYS)
        diffs += differences(prev, meta, ("layout", "classes", "checkpoint_sha256", "labeled_cases", "extra_labeled"))
        check_same_run(diffs, out_dir / MODEL_META)
        # a save interrupted before the metadata was written leaves the files it points at in *.prev
        parts_path = next((p for p in (out_dir / PARTS_FILE, out_dir / (PARTS_FILE + PREV))
                           if p.exists() and sha256_file(p) == prev.get("parts_sha256")), None)
        if parts_path is None:
            raise SFRError("cannot resume: saved parts do not match the metadata", out_dir / PARTS_FILE)
        load_parts(model, parts_path)
        state = None
        for p in (out_dir / STATE_FILE, out_dir / (STATE_FILE + PREV)):
            if p.exists():
                try:
                    st = read_state(p, "training state")
                    ok = int(st["iteration"]) == int(prev["iterations_done"])
                except (SFRError, LookupError, TypeError, ValueError, AttributeError):  # damaged: try the previous save
                    ok = False
                if ok:
                    state = st
                    break
        if state is None:
            raise SFRError("cannot resume: the training state is damaged or does not match the metadata; "
                           "start again without --resume", out_dir / STATE_FILE)
        start = int(prev["iterations_done"])
        keep = ("created", "loss_curve", "train_seconds", "iterations_done", "parts_file", "parts_sha256", "model_id", "updated")
        meta.update({k: prev[k] for k in keep if k in prev})
        events.log(f"resuming from iteration {start} of {cfg.iterations}")
    elif resume:
        events.log(f"nothing to resume in {out_dir}; starting from iteration 0")
    if prev is None and init_from is not None:
        meta["init_from"] = _load_initial_parts(model, Path(init_from), meta)

    if cfg.grad_checkpointing:
        set_grad_checkpointing(model, True)
    train_mode(model.to(device))
    opt = torch.optim.AdamW(param_groups(model, cfg.head_lr_scale), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
    meta["device"] = describe_device(device)
    meta["bf16"] = bf16

    def save(done: int, seconds: float) -> None:
        parts = trainable_parts(model)
        check_finite_weights(parts.values(), "fine-tuning", done, out_dir, LR_OPTION)
        out_dir.mkdir(parents=True, exist_ok=True)
        # the files the metadata points at stay (as *.prev) until the new metadata is written, so a
        # kill anywhere in here leaves a resumable folder
        for name in (PARTS_FILE, STATE_FILE):
            if (out_dir / name).exists():
                move_own(out_dir / name, out_dir / (name + PREV))  # through the output guard
        with atomic_path(out_dir / PARTS_FILE) as tmp:
            torch.save(parts, tmp)
        with atomic_path(out_dir / STATE_FILE) as tmp:
            torch.save({"iteration": done, "optimizer": opt.state_dict()}, tmp)
        digest = sha256_file(out_dir / PARTS_FILE)
        meta.update(
            iterations_done=done,
            parts_file=PARTS_FILE,
            parts_sha256=digest,
            model_id="sam-" + content_digest(parts)[:16],
            train_seconds=round(seconds, 2),
            updated=utcnow(),
            class_balance=balance.summary(),
        )
        write_json_atomic(out_dir / MODEL_META, meta)
        for name in (PARTS_FILE, STATE_FILE):
            remove_own(out_dir / (name + PREV))

    cache = None
    if cfg.embedding_cache and start < cfg.iterations:
        model.eval()
        cache = build_embedding_cache(model, cases, layout, plan, cfg, device, bf16, drawn_entries(cfg, start))
        train_mode(model)
    if prev is None and init_from is None and cfg.prior_bias:
        labels = cache[1] if cache is not None else sample_batch(cases, layout, plan, cfg, 0, stream=3, size=PRIOR_SAMPLES)[1]
        meta["class_prior_bias"] = init_class_bias(model, label_priors(labels, project.num_classes))
    progress = events.Progress("finetune", cfg.iterations, start=start)
    balance = ClassBalance("finetune", project.classes, cfg.iterations, IGNORE_INDEX)
    t0 = time.monotonic() - float(meta["train_seconds"])
    last_saved = start if prev is not None else -1
    if start >= cfg.iterations:
        events.log("already fine-tuned for all iterations")
    for it in range(start, cfg.iterations):
        if should_stop is not None and should_stop():
            if last_saved != it:
                save(it, time.monotonic() - t0)
            events.stage("finetune", "cancelled", iteration=it)
            raise Cancelled(f"fine-tuning stopped at iteration {it}; resume to continue")
        lr = cfg.lr * (1.0 - it / cfg.iterations) ** cfg.poly_power
        if cfg.warmup > 0:
            lr *= min(1.0, (it + 1) / cfg.warmup)
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        if cache is None:
            x, y = sample_batch(cases, layout, plan, cfg, it)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with _autocast(device, bf16):
                logits = model.logits(x)
        else:
            rows = torch.tensor([cache[2][int(j)] for j in cache_picks(cfg, it)])
            emb = cache[0][rows].to(device).float()
            y = cache[1][rows].to(device)
            with _autocast(device, bf16):
                logits = model.upsample(model.decode(emb))
        loss = dice_ce_loss(logits.float(), y)
        value = check_finite_loss(loss.detach(), "fine-tuning", it, out_dir, LR_OPTION)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        meta["loss_curve"].append(round(value, 6))
        progress.update(it + 1, loss=value, lr=lr, **balance.update(it, logits, y))
        if save_due(it + 1, cfg.save_every, cfg.iterations):
            save(it + 1, time.monotonic() - t0)
            last_saved = it + 1
    if last_saved != cfg.iterations or not (out_dir / MODEL_META).exists():
        save(cfg.iterations, time.monotonic() - t0)
    events.stage("finetune", "done", model_dir=str(out_dir), model_id=meta["model_id"])
    return out_dir
