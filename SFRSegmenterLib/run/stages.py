"""Stage bodies of ``sfr run`` that are not one library call: the stitch pictures, the confidence
stage's per-case review (through :mod:`..review`, the library ``sfr review`` uses; the new cases
on one or several processes, :func:`review_cases`), the hidden-ground-truth scores and the
validation predictions.  Every input is an argument."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import confidence as conf_mod
from ..io import inside, read_image, read_label, read_json, write_json_atomic, write_volume
from ..manifest import Project

# --------------------------------------------------------------------------- stitch pictures


def backbone_of(finetune_config, cfg) -> str:
    try:
        return finetune_config(cfg).backbone
    except Exception:  # noqa: BLE001 - only a picture depends on it
        return cfg.backbone or "vit_b"


def canvas(backbone: str) -> int:
    try:
        from ..sam import get_spec

        return int(get_spec(backbone).canvas)
    except Exception:  # noqa: BLE001 - only a picture depends on it
        return 256 if "lite" in str(backbone) else 1024


def _plan(shape, backbone: str):
    """The backbone's layout (its grid when it has one) applied to the whole volume."""
    from ..stitching import make_plan

    size = canvas(backbone)
    grid = None
    try:
        from ..sam import get_spec

        grid = get_spec(backbone).default_grid
    except Exception:  # noqa: BLE001
        pass
    try:
        return make_plan(shape, size, grid=grid)
    except ValueError:
        return make_plan(shape, size, scale=min(1.0, size / max(shape[1], shape[2])))


def stitch_pictures(project: Project, cases: list, backbone: str, out_dir: Path) -> dict:
    """``<case>.png``: each case's mosaics with its label, as SAM sees them; returns the plans."""
    from ..stitching import IGNORE_INDEX, stitch
    from ..visual import overlay_rgb, save_png, side_by_side, to_uint8

    plans = {}
    for c in cases:
        img = read_image(project.image_path(c))
        lab = read_label(project.label_path(c), img)
        plan = _plan(img.shape, backbone)
        mosaic = stitch(to_uint8(img.array), plan, fill=0)
        labs = stitch(lab.array, plan, fill=IGNORE_INDEX, mode="nearest")
        tiles = [overlay_rgb(mosaic[s], labs[s], ignore=IGNORE_INDEX) for s in range(plan.slabs)]
        save_png(side_by_side(tiles), inside(out_dir, f"{c.name}.png"))
        plans[c.name] = plan.to_dict()
    return plans


# --------------------------------------------------------------------------- pseudo-labels


def copy_index_entry(src_index: Path, dst_index: Path, case: str) -> None:
    """Carry one case's record (and the model fields) into a stage's ``pseudo-labels.json``."""
    src = read_json(src_index, "pseudo-label index", missing={})
    dst = read_json(dst_index, "pseudo-label index", missing=None)
    if dst is None:
        dst = {k: v for k, v in src.items() if k != "cases"}
        dst["cases"] = {}
    if case in src.get("cases", {}):
        dst.setdefault("cases", {})[case] = src["cases"][case]
    write_json_atomic(dst_index, dst)


# --------------------------------------------------------------------------- confidence


def review_new(model, case, project: Project, out_dir: Path, settings: dict, sam_path: "Path | None",
               largest_component: bool = False, class_mm3: "list | None" = None) -> dict:
    """Predict ``case``, write its three maps into ``out_dir``; its measurements, quality signals
    (against SAM's pseudo-label ``sam_path``, :mod:`..quality`) and scores."""
    from ..quality import class_signals
    from ..review import case_measurements, review_image, write_case_maps

    img = read_image(project.image_path(case))
    review = review_image(model, img, case.name, largest_component=largest_component, **settings)
    write_case_maps(review, img, out_dir)
    sam_label = read_label(sam_path).array if sam_path is not None and sam_path.exists() else None
    signals = class_signals(review.label, review.conf, sam_label, float(np.prod(img.spacing)), class_mm3,
                            project.num_classes)
    return {**case_measurements(review, img), "params": settings, "signals": signals,
            **score(project, case, review.label, sam_label)}


def review_cases(project: Project, model_dir: Path, out_dir: Path, cases: list, settings: dict, sam_labels: dict,
                 largest_component: bool = False, class_mm3: "list | None" = None, device: str = "auto",
                 should_stop=None, on_case=None, done_before: int = 0) -> dict:
    """:func:`review_new` of every case in ``cases`` with the V-Net in ``model_dir``: ``{case: entry}``
    in the order of ``cases``; ``sam_labels[case]``: SAM's pseudo-label it is compared with.

    Under torchrun (``sfr run --processes N``, :mod:`.distributed`) the cases are split over the
    processes as the pseudo-labels' are (:mod:`..shard`): each process writes its cases' maps, the
    processes meet once and every one returns all the entries; the main process logs who computed
    how many.  ``should_stop`` is polled before each case: a process told to stop takes no further
    case, and the cases done by then are returned (the caller tells a cancel by the missing ones).
    ``on_case(case, entry)``: called by the process that computed a case, right after it (one
    process: the pipeline records it at once).  The main process's progress counts from
    ``done_before`` cases (those the caller did not need to compute)."""
    from .. import events
    from ..retrain.inference import load_model
    from ..shard import sharded, voxel_counts

    out_dir = Path(out_dir)
    selected = {name: project.case(name) for name in cases}
    with sharded(device) as shard:
        sizes = voxel_counts({n: project.image_path(c) for n, c in selected.items()}) if shard.world > 1 else {}
        own = shard.mine(list(cases), sizes)
        model = load_model(model_dir, shard.device)
        total = done_before + len(cases)
        bar = events.Progress("confidence", total, start=done_before) if shard.main else None
        results = {}
        for i, name in enumerate(own):
            if should_stop is not None and should_stop():
                break
            sam = sam_labels.get(name)
            results[name] = review_new(model, selected[name], project, out_dir, settings,
                                       None if sam is None else Path(sam), largest_component, class_mm3)
            if on_case is not None:
                on_case(name, results[name])
            if bar is not None:  # this process's share stands for the whole stage's
                bar.update(done_before + round((i + 1) * len(cases) / len(own)), case=name)
        shard.report("confidence", list(results))
        if shard.world > 1:
            parts = shard.gather(results)
            if shard.main:
                events.log(f"confidence: {sum(map(len, parts))} of {len(cases)} case(s) computed by {shard.world} "
                           "processes (" + ", ".join(f"process {r}: {len(p)}" for r, p in enumerate(parts)) + ")")
            for part in parts:
                results.update(part)
    return {name: results[name] for name in cases if name in results}


def review_again(entry: dict, case, project: Project, out_dir: Path, settings: dict) -> dict:
    """Apply new review settings to the saved maps of ``case`` (nothing is predicted again)."""
    from ..review import case_measurements

    img = read_image(project.image_path(case))
    review = conf_mod.review_from_maps(case.name, read_image(out_dir / f"{case.name}_confidence.nii.gz").array,
                                       read_label(out_dir / f"{case.name}.nii.gz").array, **settings)
    write_volume(img.with_array(review.lowconf.astype(np.uint8)), out_dir / f"{case.name}_lowconf.nii.gz")
    entry = {**entry, **case_measurements(review, img), "params": settings}
    entry.pop("trusted", None)  # a run before trust left the cache
    return entry


def structure_mm3(label_path: Path) -> float:
    """Physical volume (mm^3) of the structure (label > 0) in a label file.  A label annotated on
    some slices only (255 elsewhere, :mod:`..sparse`) is scaled by all slices / annotated slices."""
    from ..sparse import NOT_ANNOTATED, annotated_slices

    lab = read_label(label_path)
    arr = lab.array
    voxels = np.count_nonzero((arr > 0) & (arr != NOT_ANNOTATED))
    done = annotated_slices(arr)
    if done and done < arr.shape[0]:
        voxels = voxels * arr.shape[0] / done
    return voxels * float(np.prod(lab.spacing))


def class_mm3(label_path: Path, num_classes: int) -> list:
    """Physical volume (mm^3) of each foreground class in a label file."""
    lab = read_label(label_path)
    counts = np.bincount(lab.array.ravel().astype(np.int64), minlength=num_classes)
    return [float(counts[k]) * float(np.prod(lab.spacing)) for k in range(1, num_classes)]


def _class_dice(pred, gt, num_classes: int) -> list:
    from ..metrics import dice

    return [None if (v := dice(pred == k, gt == k)) is None else round(float(v), 6) for k in range(1, num_classes)]


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 6) if values else None


def score(project: Project, case, label: np.ndarray, sam_label: "np.ndarray | None") -> dict:
    """Dice of the V-Net label (per class and mean; and of SAM's pseudo-label) when hidden ground
    truth exists: what the quality estimate is measured against, never an input of the run."""
    if not case.label:
        return {}
    gt_path = project.label_path(case)
    if not gt_path.exists():
        return {}
    gt = read_label(gt_path).array
    per_class = _class_dice(label, gt, project.num_classes)
    out = {"dice": _mean(per_class), "dice_per_class": per_class}
    if sam_label is not None:
        out["sam_dice"] = _mean(_class_dice(sam_label, gt, project.num_classes))
    return out


# --------------------------------------------------------------------------- validation


def predict_validation(model_dir: Path, cases: list, project: Project, out_dir: Path, device: str,
                       check_cancel, largest_component: bool = False) -> list:
    """The V-Net's label of every validation case in ``out_dir`` (kept when resumed), post-processed
    as the unlabeled cases' are: the pairs to score."""
    from ..quality import keep_largest_component
    from ..retrain.inference import load_model, predict_volume

    model = load_model(model_dir, device)
    pairs = []
    for c in cases:
        check_cancel()
        target = inside(out_dir, f"{c.name}.nii.gz")
        if not target.exists():  # resumed: cases already predicted are kept
            img = read_image(project.image_path(c))
            prob = np.asarray(_numpy(predict_volume(model, img.array)))
            label = prob.argmax(axis=0).astype(np.uint8)
            if largest_component:
                label = keep_largest_component(label, prob.shape[0])
            write_volume(img.with_array(label), target)
        pairs.append((c.name, target, project.label_path(c)))
    return pairs


def _numpy(x):
    try:
        return x.detach().float().cpu().numpy()
    except AttributeError:
        return np.asarray(x)
