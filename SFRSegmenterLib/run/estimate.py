"""The estimate of a run's duration, made before stage F from a short calibration on this machine.

:func:`calibrate` builds the run's real models (stage F's SAM with its checkpoint and LoRA or
frozen encoder, stage R's network with its filters) and times a few steps of each: a SAM
encoder pass over one mosaic, a SAM training step (the decoder on cached embeddings, or the
whole model with LoRA), a V-Net training step on the run's crop and batch (with the mean
teacher's extra pass), a V-Net forward pass over one window.  :func:`stage_seconds` turns those
step times into seconds per stage with the run's counts (iterations, embedding cache, windows
per case from the image headers, rounds).  A later SFR+ round is counted as if it pseudo-labeled
every unlabeled case again (an upper bound: only the cases not trusted are).

On ``--processes N`` (:mod:`.distributed`) the stages split over the processes are faster by what
:func:`parallel_speedup` says is honest for the device: the pseudo-labels' and the confidence
stage's per-case work (the cases split) and stage R's iterations (the batch split) are divided by
N on N GPUs; on the CPU the processes share the cores, so only the cores the calibration left idle
count (a calibration that used every core: no speed-up).  Each of those stages then also pays the
start of N processes (``STAGE_OVERHEAD_S["launch"]``).

The step times are kept in the run folder (``RUN/calibration.json``), each stage's under a key of
what they depend on (the machine, the device, the thread count, the model and the shapes it is
timed on; not the iterations, seeds or learning rates): a resumed run, a warm start or another
run of the project on the same machine reuses them instead of timing the same steps again.

The estimate is an event, ``{"event": "estimate", "seconds": S, "stages": {...}, "budget": ...,
"calibration": {...}}``, and a log line; a run whose estimate cannot be made logs why and goes on.
"""

from __future__ import annotations

import time

from .. import events

#: timed repetitions per step after one untimed warm-up (the first pass allocates); a step
#: whose warm-up took over SLOW_S seconds is timed once (a LoRA step on a CPU takes ~30 s)
REPEATS, SLOW_S = 3, 1.0
#: seconds added to each stage's timed steps for its work outside them (reading volumes, loading
#: models, writing files): fixed allowances of the order of that work on the bundled sample
STAGE_OVERHEAD_S = {"stitch": 0.2, "finetune": 1.0, "pseudolabel": 0.5, "retrain": 1.0, "confidence": 0.3,
                    "metrics": 0.2, "launch": 10.0}  # launch: torchrun starting N processes that import torch
#: the stages :mod:`.distributed` runs on N processes
SPLIT_STAGES = ("pseudolabel", "retrain", "confidence")


def about(seconds: float) -> str:
    """``about 12 min``, ``about 3.5 h``, ``about 6.4 days``: how the estimate is told."""
    s = float(seconds)
    if s < 90:
        return f"about {max(1, round(s))} s"
    if s < 90 * 60:
        return f"about {round(s / 60)} min"
    if s < 48 * 3600:
        return f"about {s / 3600:.1f} h"
    return f"about {s / 86400:.1f} days"


def _timed(fn, repeats: int = REPEATS) -> float:
    t0 = time.perf_counter()
    fn()  # warm-up
    if time.perf_counter() - t0 > SLOW_S:
        repeats = 1
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def _shapes(project, cases) -> list:
    from ..io.read import read_header

    return [tuple(int(v) for v in reversed(read_header(project.image_path(c))["size_xyz"])) for c in cases]


def _sam_layout(project, ft_cfg):
    """Stage F's stitching layout for the project: the crop cut to the labeled cases (as finetune)."""
    from ..finetune import _layout
    from ..sam.registry import get_spec

    return _layout(ft_cfg, get_spec(ft_cfg.backbone), _shapes(project, project.by_role("labeled")))


def _vnet_crop(project, rt_cfg) -> tuple:
    """Stage R's crop: the one given, else fitted to every case (as retrain does)."""
    from ..retrain.config import LA_CROP
    from ..retrain.data import auto_crop
    from ..retrain.networks import required_multiple

    if rt_cfg.crop:
        return tuple(rt_cfg.crop)
    cases = project.by_role("labeled") + project.by_role("unlabeled")
    return auto_crop(_shapes(project, cases), LA_CROP, required_multiple(rt_cfg.network))


def calibrate_sam(project, ft_cfg, device) -> dict:
    """Step times of stage F's model: encoder per mosaic, one training step, model build."""
    import torch

    from ..sam.loss import dice_ce_loss
    from ..sam.model import train_mode
    from ..sam.build import build_segmenter

    layout = _sam_layout(project, ft_cfg)
    plan = layout.plan()
    with torch.random.fork_rng(devices=[]):
        def build():
            return build_segmenter(ft_cfg.backbone, ft_cfg.checkpoint, project.num_classes, ft_cfg.lora_rank)

        build()  # the first build also pays imports and first allocations, which a stage does not again
        t0 = time.perf_counter()
        model = build()
    build_s = time.perf_counter() - t0
    model.to(device)
    S, slabs = plan.canvas, plan.slabs
    x1 = torch.zeros(1, 3, S, S, device=device)
    model.eval()
    with torch.no_grad():
        enc_s = _timed(lambda: model.encode(x1))
        emb = model.encode(x1)
    train_mode(model)
    n = int(ft_cfg.batch_size) * slabs
    y = torch.zeros(n, S, S, dtype=torch.long, device=device)
    cached = bool(ft_cfg.embedding_cache)
    xb = torch.zeros(n, 3, S, S, device=device)
    eb = emb.expand(n, *emb.shape[1:]).contiguous()

    def step():
        logits = model.upsample(model.decode(eb)) if cached else model.logits(xb)
        dice_ce_loss(logits.float(), y).backward()

    step_s = _timed(step)
    with torch.no_grad():
        model.eval()
        dec_s = _timed(lambda: model.upsample(model.decode(emb)))
    return {"backbone": ft_cfg.backbone, "canvas": S, "slabs": slabs, "crop": list(layout.crop),
            "build_s": build_s, "encoder_s": enc_s, "decoder_s": dec_s, "train_step_s": step_s}


def calibrate_vnet(project, rt_cfg, device) -> dict:
    """Step times of stage R's network on the run's crop: one training step, one window forward."""
    import torch

    from ..retrain.networks import build_network

    crop = _vnet_crop(project, rt_cfg)
    with torch.random.fork_rng(devices=[]):
        model = build_network(rt_cfg.network, 1, project.num_classes, **rt_cfg.network_options()).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    lb, ub = int(rt_cfg.labeled_bs), int(rt_cfg.unlabeled_bs)
    x = torch.zeros(lb + ub, 1, *crop, device=device)
    teacher = rt_cfg.ssl != "supervised" and ub > 0

    def step():
        model.train()
        out = model(x)
        out.float().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if teacher:  # the mean teacher's pass over the unlabeled crops
            with torch.no_grad():
                model(x[lb:])

    step_s = _timed(step)
    model.eval()
    with torch.no_grad():
        xw = torch.zeros(1, 1, *crop, device=device)
        fwd_s = _timed(lambda: model(xw))
    return {"network": rt_cfg.network, "crop": list(crop), "train_step_s": step_s, "window_s": fwd_s}


def parallel_speedup(processes: int, device_kind: str, calibration_threads: int = 1,
                     process_threads: "int | None" = None, cores: "int | None" = None) -> dict:
    """How much faster the stages of :data:`SPLIT_STAGES` go on ``processes`` processes than the
    calibration measured in this one: ``{"processes", "cases", "retrain", "why"}`` (``cases``: the
    pseudo-labels' and the confidence stage's per-case work; ``retrain``: stage R's iterations).

    On CUDA each process has its own GPU: N.  On the CPU the processes share the cores
    (``cores``; each process has ``process_threads`` threads, :func:`.distributed.threads_per_process`):
    only the threads beyond the ``calibration_threads`` the calibration already used count, whole
    multiples of them and at most N; a calibration that used every core gets no speed-up."""
    n = max(1, int(processes))
    if n == 1:
        return {"processes": 1, "cases": 1.0, "retrain": 1.0, "why": "one process"}
    if device_kind == "cuda":
        return {"processes": n, "cases": float(n), "retrain": float(n), "why": f"{n} GPUs, one process each"}
    if cores is None:
        import os

        cores = os.cpu_count() or 1
    if process_threads is None:
        from .distributed import threads_per_process

        process_threads = threads_per_process(n)
    used = max(1, int(calibration_threads))
    busy = min(int(cores), n * max(1, int(process_threads)))  # the cores the N processes keep busy
    factor = float(max(1, min(n, busy // used)))
    return {"processes": n, "cases": factor, "retrain": factor,
            "why": f"{n} processes share {cores} CPU cores ({process_threads} thread(s) each; the calibration "
                   f"used {used}): x{factor:g}"}


def stage_seconds(counts: dict, sam: dict, vnet: dict, rounds: int, speedup: "dict | None" = None) -> dict:
    """Seconds per stage (the names ``sfr run`` gives its stages) from step times and counts.

    ``counts``: iterations_sam, embedding_cache, iterations_vnet, sam_windows (SAM windows over
    every unlabeled case), vnet_windows (V-Net windows over every unlabeled case), validation_windows,
    frozen_encoder (LoRA rank 0: rounds after the first reuse the stored window embeddings).
    ``speedup``: :func:`parallel_speedup` of the run's processes (None: one process).
    """
    o = STAGE_OVERHEAD_S
    speedup = speedup or parallel_speedup(1, "cpu")
    launch = o["launch"] if speedup["processes"] > 1 else 0.0
    sam_window = sam["slabs"] * (sam["encoder_s"] + sam["decoder_s"])
    finetune = (o["finetune"] + sam["build_s"] + counts["embedding_cache"] * sam["slabs"] * sam["encoder_s"]
                + counts["iterations_sam"] * sam["train_step_s"])
    pseudo = launch + o["pseudolabel"] + sam["build_s"] + counts["sam_windows"] * sam_window / speedup["cases"]
    # a frozen encoder's window embeddings are stored by the first round (..encoder_store): later
    # rounds only decode
    later = (launch + o["pseudolabel"] + sam["build_s"] + counts["sam_windows"] * sam["slabs"] * sam["decoder_s"]
             / speedup["cases"]) if counts.get("frozen_encoder") else pseudo
    retrain = launch + o["retrain"] + counts["iterations_vnet"] * vnet["train_step_s"] / speedup["retrain"]
    confidence = launch + o["confidence"] + counts["vnet_windows"] * vnet["window_s"] / speedup["cases"]
    out = {"stitch": o["stitch"]}
    for r in range(rounds + 1):
        out.update({f"finetune-r{r}": finetune, f"pseudolabel-r{r}": pseudo if r == 0 else later, f"retrain-r{r}": retrain,
                    f"confidence-r{r}": confidence})
    out["metrics"] = o["metrics"] + counts["validation_windows"] * vnet["window_s"]
    return {k: round(v, 1) for k, v in out.items()}


def _counts(project, cfg, ft_cfg, rt_cfg, sam: dict, vnet: dict) -> dict:
    from ..sliding import SAM_OVERLAP, count_windows, overlap_stride, resolve_stride

    overlap = SAM_OVERLAP if cfg.pseudo_overlap is None else float(cfg.pseudo_overlap)
    sam_stride = overlap_stride(sam["crop"], overlap)
    unl = _shapes(project, project.by_role("unlabeled"))
    val = _shapes(project, project.by_role("validation"))
    vstride = resolve_stride(vnet["crop"])
    from ..finetune import drawn_entries

    # the mosaics the cache computes: those the run's iterations draw
    cached = len(drawn_entries(ft_cfg)) if ft_cfg.embedding_cache else 0
    return {"iterations_sam": int(ft_cfg.iterations), "embedding_cache": cached,
            "frozen_encoder": int(ft_cfg.lora_rank) == 0,
            "iterations_vnet": int(rt_cfg.iterations),
            "sam_windows": sum(count_windows(s, sam["crop"], sam_stride) for s in unl),
            "vnet_windows": sum(count_windows(s, vnet["crop"], vstride) for s in unl),
            "validation_windows": sum(count_windows(s, vnet["crop"], vstride) for s in val)}


#: The record's format: step times of each stage under the key of what they were measured on.
CALIBRATION_FORMAT = 2


def _machine() -> list:
    import socket

    import torch

    return [socket.gethostname(), torch.get_num_threads(), torch.__version__]


def _key(parts) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:20]


def calibration_keys(project, ft_cfg, rt_cfg, sam_device, vnet_device) -> dict:
    """``{"sam": key, "vnet": key}``: what each stage's step times depend on, and nothing else
    (the machine, the device, the thread count, the model and the shapes it is timed on), so a
    warm start or another run of the project on this machine reuses them although its iterations,
    seeds, learning rates or labeled cases differ."""
    layout = _sam_layout(project, ft_cfg)
    plan = layout.plan()
    crop = _vnet_crop(project, rt_cfg)
    sam = [CALIBRATION_FORMAT, *_machine(), str(sam_device), ft_cfg.backbone, ft_cfg.checkpoint, int(ft_cfg.lora_rank),
           int(ft_cfg.batch_size), bool(ft_cfg.embedding_cache), ft_cfg.bf16, bool(ft_cfg.grad_checkpointing),
           list(layout.crop), int(plan.canvas), int(plan.slabs), project.num_classes]
    vnet = [CALIBRATION_FORMAT, *_machine(), str(vnet_device), rt_cfg.network, rt_cfg.network_options(), list(crop),
            int(rt_cfg.labeled_bs), int(rt_cfg.unlabeled_bs), rt_cfg.ssl != "supervised", project.num_classes]
    return {"sam": _key(sam), "vnet": _key(vnet)}


def _saved_calibrations(paths, keys: dict) -> dict:
    """``{"sam": steps, "vnet": steps}`` for each stage whose key a record among ``paths`` (this
    run's first, then earlier runs' of the project) holds; a damaged or older record counts as none."""
    from ..io import read_json

    found = {}
    for path in paths:
        if path is None or not path.exists():
            continue
        try:
            saved = read_json(path, "calibration", missing={})
        except Exception:  # noqa: BLE001 - a damaged record: calibrate again
            continue
        if not isinstance(saved, dict) or saved.get("format") != CALIBRATION_FORMAT:
            continue
        for stage, key in keys.items():
            entry = saved.get(stage)
            if stage not in found and isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("steps"), dict):
                found[stage] = entry["steps"]
    return found


def estimate_run(project, cfg, run_path=None, processes: int = 1, earlier=(), sam_init=None) -> dict:
    """The estimate event's fields for a run with (effective) configuration ``cfg`` on
    ``processes`` processes (resolved, :func:`.distributed.resolve_processes`); with
    ``run_path``, step times saved there by an earlier attempt of the run, or in ``earlier``
    (other runs' calibration records, newest first) for the same models on the same machine, are
    reused (``calibration_reused``: the stages reused), and the run's own are saved.  ``sam_init``:
    the SAM model a warm start continues (stage F keeps its crop: :func:`..finetune.keep_crop_of`)."""
    import torch

    from ..finetune import keep_crop_of

    from ..device import resolve_device
    from ..io import write_json_atomic
    from ..runfolder import RunFolder
    from .config import finetune_config, retrain_config

    ft_cfg, rt_cfg = keep_crop_of(finetune_config(cfg), sam_init), retrain_config(cfg)
    t0 = time.perf_counter()
    sam_device, vnet_device = resolve_device(ft_cfg.device), resolve_device(rt_cfg.device)
    record = RunFolder(run_path).calibration if run_path is not None else None
    keys = calibration_keys(project, ft_cfg, rt_cfg, sam_device, vnet_device)
    saved = _saved_calibrations([record, *earlier], keys)
    sam = saved.get("sam") or calibrate_sam(project, ft_cfg, sam_device)
    vnet = saved.get("vnet") or calibrate_vnet(project, rt_cfg, vnet_device)
    if record is not None:  # this run's own record, also where the step times came from elsewhere
        try:
            write_json_atomic(record, {"format": CALIBRATION_FORMAT, "sam": {"key": keys["sam"], "steps": sam},
                                       "vnet": {"key": keys["vnet"], "steps": vnet}})
        except OSError:  # a full disk: the estimate stands, a resume calibrates again
            pass
    counts = _counts(project, cfg, ft_cfg, rt_cfg, sam, vnet)
    speedup = parallel_speedup(processes, vnet_device.type, torch.get_num_threads())
    stages = stage_seconds(counts, sam, vnet, cfg.resolved_rounds, speedup)
    choice = cfg.budget_choice or {}
    embed = counts["embedding_cache"] * sam["slabs"] * sam["encoder_s"]
    return {"seconds": round(sum(stages.values()), 1), "stages": stages, "budget": choice.get("name"),
            "embed_share": round(embed / stages["finetune-r0"], 4) if stages["finetune-r0"] else 0.0,
            "device": choice.get("device"), "method": "calibration", "calibration_reused": sorted(saved),
            "calibration_s": round(time.perf_counter() - t0, 2), "counts": counts, "processes": speedup,
            "steps": {"sam": {k: (round(v, 5) if isinstance(v, float) else v) for k, v in sam.items()},
                      "vnet": {k: (round(v, 5) if isinstance(v, float) else v) for k, v in vnet.items()}}}


def how_calibrated(est: dict) -> str:
    """Where an estimate's step times came from, in words (an estimate event of any version)."""
    reused = est.get("calibration_reused") or []
    if reused is True:  # events written before each stage was keyed on its own
        reused = ["sam", "vnet"]
    names = {"sam": "stage F", "vnet": "stage R"}
    seconds = float(est.get("calibration_s") or 0)
    if not reused:
        return f"calibrated in {seconds:.1f} s"
    return (f"step times of {' and '.join(names.get(r, r) for r in reused)} measured earlier on this machine reused"
            + ("" if len(reused) == 2 else f", the rest calibrated in {seconds:.1f} s"))


def emit_estimate(project, cfg, run_path=None, processes: int = 1, earlier=(), sam_init=None) -> "dict | None":
    """Emit the estimate event and its log line; when it cannot be made, log why and return None."""
    try:
        est = estimate_run(project, cfg, run_path, processes, earlier, sam_init)
    except Exception as exc:  # noqa: BLE001 - the run goes on without an estimate
        events.log(f"no estimate of the run's duration: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                   "warning")
        return None
    events.emit("estimate", **est)
    events.log(f"estimate: {about(est['seconds'])} for the whole run with budget {est['budget']} ({how_calibrated(est)}: SAM step "
               f"{est['steps']['sam']['train_step_s']:.3f} s, V-Net step {est['steps']['vnet']['train_step_s']:.3f} s)"
               + (f"; {est['processes']['why']}" if est["processes"]["processes"] > 1 else ""))
    return est
