"""The clinician's minutes (issue 21): the ground truth plays the clinician, the product does the rest.

    python bench/clinician.py sparse [--seeds 1337 1] [--iterations 300]
    python bench/clinician.py warm   [--seed 1337] [--iterations-sam 150 --iterations-vnet 300]
                                     [--unlabeled 8 --validation 4 --embedding-cache 64]
    python bench/clinician.py corrections [--seed 1337]   # after 'warm', in the same --work folder
    python bench/clinician.py next [--seed 1337] [--draws 3] # after 'warm' (its seed), or its own first run
    python bench/clinician.py la-commands          # prints the LA cpu-half commands (not run here)

* ``sparse``: equal annotation effort counted in annotated axial slices: one whole volume (every
  slice) against the same number of slices spread over four volumes (evenly through each
  structure, 255 elsewhere), stage R (the product's ``retrain``, supervised, the demo's slim
  V-Net) trained on each, scored on held-out hippocampus cases (``predict_volume``, Dice per
  class).  Reduced: stage R only (no SAM), for the CPU budget.
* ``warm``: ``sfr run`` (the demo's settings, shorter) on a hippocampus project; the clinician
  corrects the 5 flagged slices of the 3 cases ``label_next`` ranks first (ground truth on those
  slices, 255 elsewhere: the cases become partially labeled through ``sfr init``); then
  ``sfr run --warm-start`` against a full ``sfr run`` after the same corrections: wall time and
  Dice (validation cases and the still-unlabeled cases, from the runs' metrics.json).
* ``corrections``: is a flagged slice worth more than any slice? From the first run of ``warm``,
  the same 3 cases get ground truth on as many *random* slices through their structure (seeded),
  then the same warm start; the Dice gain over the first run per corrected slice, flagged against
  random (validation cases and the still-unlabeled cases, per case from metrics.json).
* ``next``: which case to label next? From the first run of ``warm``, the clinician labels one
  more whole case: the first of today's ``label_next`` ranking of that run's review entries
  against ``--draws`` random unlabeled cases (seeded), each followed by the same warm start; Dice
  on the validation cases and on the unlabeled cases that none of the conditions labeled (the
  same cases for every condition).
  ``--reuse`` keeps a case's warm start from an earlier call (same first run): a changed ranking
  then costs only the cases not run before.

Results: ``bench/results/clinician_<experiment>.{json,md}``.  Run with OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import HIPPOCAMPUS, REPO, machine

import numpy as np  # noqa: E402

from SFRSegmenterLib import jobs  # noqa: E402
from SFRSegmenterLib.io import read_label, write_volume  # noqa: E402
from SFRSegmenterLib.labelnext import rank_cases  # noqa: E402
from SFRSegmenterLib.sparse import NOT_ANNOTATED  # noqa: E402

RESULTS = REPO / "bench" / "results"
SAMPLE_CASES = sorted(p.name[:-7] for p in (REPO / "SFRSegmenterLib" / "sample_data" / "hippocampus" / "images").glob("*.nii.gz"))
#: Held-out hippocampus cases (not in the bundled sample) for validation Dice.
VALIDATION = [f"hippocampus_{i:03d}" for i in (101, 102, 104, 105, 106, 107, 108, 109)]


def structure_slices(label: np.ndarray) -> np.ndarray:
    return np.flatnonzero((label > 0).reshape(label.shape[0], -1).any(1))


def spread(label: np.ndarray, n: int) -> list:
    """``n`` slices evenly through the structure (what a clinician annotating n slices would pick)."""
    fg = structure_slices(label)
    return sorted({int(fg[int(round(i))]) for i in np.linspace(0, len(fg) - 1, n)})


def sparse_label(label: np.ndarray, slices) -> np.ndarray:
    out = np.full_like(label, NOT_ANNOTATED)
    out[list(slices)] = label[list(slices)]
    return out


def link_images(folder: Path, names) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / f"{n}.nii.gz").symlink_to(HIPPOCAMPUS / "images" / f"{n}.nii.gz")
    return folder


def sfr(*args, env_extra=None) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **(env_extra or {}))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "SFRSegmenterLib", "--progress", "none", *map(str, args)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"sfr {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
    return time.monotonic() - t0


# --------------------------------------------------------------------------- sparse vs whole


def val_dice(model, k: int = 3) -> dict:
    from SFRSegmenterLib.io import read_image
    from SFRSegmenterLib.metrics import dice
    from SFRSegmenterLib.retrain import predict_volume

    per = {c: [] for c in range(1, k)}
    for n in VALIDATION:
        pred = predict_volume(model, read_image(HIPPOCAMPUS / "images" / f"{n}.nii.gz").array).argmax(0)
        gt = read_label(HIPPOCAMPUS / "labels" / f"{n}.nii.gz").array
        for c in per:
            per[c].append(float(dice(pred == c, gt == c)))
    means = {str(c): float(np.mean(v)) for c, v in per.items()}
    return {"dice_per_class": means, "mean_dice": float(np.mean(list(means.values())))}


def sparse_condition(work: Path, name: str, labels: dict, seed: int, iterations: int) -> dict:
    from SFRSegmenterLib.commands.demo import DEMO_SETTINGS
    from SFRSegmenterLib.manifest import init_project
    from SFRSegmenterLib.retrain import RetrainConfig, load_model, retrain

    d = work / f"{name}-s{seed}"
    if d.exists():
        shutil.rmtree(d)
    images, lab_dir = link_images(d / "images", labels), d / "labels"
    lab_dir.mkdir()
    for case, (vol, arr) in labels.items():
        write_volume(vol.with_array(arr), lab_dir / f"{case}.nii.gz")
    project = init_project(d / "p", images, lab_dir)
    cfg = RetrainConfig(ssl="supervised", use_sam=False, iterations=iterations, device="cpu", save_every=10**6,
                        seed=seed, **DEMO_SETTINGS["vnet_options"])
    t0 = time.monotonic()
    model = load_model(retrain(project, cfg, pseudo_dir=d / "none", out_dir=d / "vnet"), "cpu")
    row = {"condition": name, "seed": seed, "train_s": round(time.monotonic() - t0, 1),
           "annotated_slices": {c: int(((a != NOT_ANNOTATED).reshape(a.shape[0], -1)).any(1).sum())
                                for c, (_, a) in labels.items()}}
    row.update(val_dice(model))
    return row


def run_sparse(args) -> dict:
    whole_case, spread_cases = SAMPLE_CASES[0], SAMPLE_CASES[:4]
    vols = {c: read_label(HIPPOCAMPUS / "labels" / f"{c}.nii.gz") for c in spread_cases}
    effort = vols[whole_case].array.shape[0]  # every slice of one volume
    n = len(spread_cases)
    counts = [effort // n + (1 if i < effort % n else 0) for i in range(n)]  # the same total
    conditions = {
        "whole": {whole_case: (vols[whole_case], vols[whole_case].array)},
        "sparse": {c: (vols[c], sparse_label(vols[c].array, spread(vols[c].array, k))) for c, k in zip(spread_cases, counts)},
    }
    rows = [sparse_condition(Path(args.work), name, labels, seed, args.iterations)
            for seed in args.seeds for name, labels in conditions.items()]
    return {"experiment": "sparse", "effort_slices": effort, "iterations": args.iterations,
            "validation": VALIDATION, "rows": rows}


# --------------------------------------------------------------------------- warm start


def metrics_of(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    out = {}
    for part in ("pseudo_labels", "validation"):
        if part in m:
            out[part] = {"mean_dice": m[part]["mean"]["dice"], "cases": sorted({r["case"] for r in m[part]["cases"]})}
    return out


def init_hippocampus(root: Path, labeled: dict, unlabeled: list, n_validation: int, force: bool = False) -> None:
    """A project of links: ``labeled`` {case: label array or None (whole)}, then unlabeled, then validation."""
    src = root.parent / "src"
    if src.exists():
        shutil.rmtree(src)
    names = list(labeled) + unlabeled + VALIDATION[:n_validation]
    images = link_images(src / "images", names)
    (src / "labels").mkdir()
    for n in names:
        arr = labeled.get(n)
        if arr is None:
            (src / "labels" / f"{n}.nii.gz").symlink_to(HIPPOCAMPUS / "labels" / f"{n}.nii.gz")
        else:
            write_volume(read_label(HIPPOCAMPUS / "labels" / f"{n}.nii.gz").with_array(arr), src / "labels" / f"{n}.nii.gz")
    (src / "cases.txt").write_text("\n".join(names) + "\n")
    extra = ["--force"] if force else []
    sfr("init", root, "--images", images, "--labels", src / "labels", "--cases", src / "cases.txt",
        "--labeled", len(labeled), "--validation", n_validation, *extra)


def timed(*args) -> "subprocess.Popen":
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "SFRSegmenterLib", "--progress", "none", *map(str, args)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc.t0 = time.monotonic()
    return proc


def finish(proc) -> dict:
    """Wait for ``proc``: its wall time and CPU time (its own and its children's, from wait4)."""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - proc.t0
    err = proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"sfr run failed:\n{err[-3000:]}")
    return {"wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1)}


def wait_done(root: Path) -> Path:
    while True:
        run = jobs.run_dir(root)
        state = jobs.read_status(run).get("state")
        if state == "done":
            return run
        if state not in ("starting", "running"):
            raise SystemExit(f"the first run ended {state}: {run}")
        time.sleep(10)


def stage_seconds(run: Path) -> float:
    return round(sum(float(r.get("seconds") or 0) for r in json.loads((run / "stages.json").read_text()).values()), 1)


def run_warm(args) -> dict:
    """The first run (or, with --reuse-first, the one under way), the corrections, then the
    warm start and the full run side by side (the full one in a copy of the project, so that both
    run under the same machine load; their CPU seconds are each process tree's own)."""
    work = Path(args.work) / f"warm-s{args.seed}"
    root = work / "p"
    labeled0, unlabeled0 = SAMPLE_CASES[:2], SAMPLE_CASES[2:2 + args.unlabeled]
    settings = [*warm_settings_of(args), "--sam-option", f"embedding_cache={args.embedding_cache}"]
    schedule = ["--iterations-sam", args.iterations_sam, "--iterations-vnet", args.iterations_vnet]
    if not args.reuse_first:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        init_hippocampus(root, {c: None for c in labeled0}, unlabeled0, args.validation)
        finish(timed("run", root, *settings, *schedule))
    first = wait_done(root)
    review = json.loads((first / "review.json").read_text())
    flagged = {e["case"]: [s["index"] for s in e["flagged_slices"]] for e in review["cases"]}
    chosen = [n["case"] for n in review["label_next"][:3]]
    corrected = {}
    for c in chosen:  # the clinician draws the ground truth on the 5 flagged slices
        gt = read_label(HIPPOCAMPUS / "labels" / f"{c}.nii.gz").array
        corrected[c] = sparse_label(gt, flagged[c][:5])
    rest = [c for c in unlabeled0 if c not in chosen]
    init_hippocampus(root, {**{c: None for c in labeled0}, **corrected}, rest, args.validation, force=True)
    copy = work / "p-full"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(root, copy, symlinks=True, ignore=shutil.ignore_patterns("runs"))
    manifest = json.loads((copy / "sfr-project.json").read_text())
    for case in manifest["cases"]:  # the copy's paths: absolute, to the same files
        for key in ("image", "label"):
            if case.get(key) and not Path(case[key]).is_absolute():
                case[key] = str((root / case[key]).resolve())
    (copy / "sfr-project.json").write_text(json.dumps(manifest, indent=2))
    # the warm start: warmstart.WARM_FRACTION of each stage's iterations, from the first run's models
    # the warm start also caches a fifth of the mosaics (run/warmstart.py): no embedding_cache of its own
    warm_proc = timed("run", root, *warm_settings_of(args), "--warm-start")
    full_proc = timed("run", copy, *settings, *schedule)
    t_warm, t_full = finish(warm_proc), finish(full_proc)
    warm, full = jobs.run_dir(root), jobs.run_dir(copy)
    warm_cfg = json.loads((warm / "config.json").read_text())  # what the warm start ran (its short schedule)
    warm_iters = [warm_cfg["iterations_sam"], warm_cfg["iterations_vnet"]]
    return {"experiment": "warm", "seed": args.seed, "embedding_cache": args.embedding_cache,
            "labeled": labeled0, "corrected_cases": chosen,
            "corrected_slices": {c: flagged[c][:5] for c in chosen},
            "iterations": {"full": [args.iterations_sam, args.iterations_vnet], "warm": warm_iters},
            "first_run": {"run": first.name, "stage_s": stage_seconds(first), **metrics_of(first)},
            "warm_start": {"run": warm.name, **t_warm, "stage_s": stage_seconds(warm), **metrics_of(warm),
                           "stages_s": stages_of(warm), "warm_start_from": warm_cfg["warm_start_from"]},
            "full_after": {"run": full.name, **t_full, "stage_s": stage_seconds(full), "stages_s": stages_of(full),
                           **metrics_of(full)}}


def stages_of(run: Path) -> dict:
    """Each stage's seconds (stages.json), to see where a short run's time goes."""
    return {k: round(float(r.get("seconds") or 0), 1) for k, r in json.loads((run / "stages.json").read_text()).items()}


def mean_dice_of(run: Path, part: str, cases) -> float:
    """Mean Dice over ``cases`` (all classes) of one part of a run's metrics.json."""
    rows = [r["dice"] for r in json.loads((run / "metrics.json").read_text())[part]["cases"] if r["case"] in set(cases)]
    return float(np.mean(rows))


def warm_settings_of(args) -> list:
    """The demo's settings as options, less the cached mosaics: what ``run_warm`` gives its warm
    start (run/warmstart.py sets the short schedule and the cache); the full runs add the cache."""
    return ["--backbone", "lite_medsam", "--device", "cpu", "--seed", args.seed, "--pseudo-overlap", "0",
            "--sam-option", "lora_rank=0", "--vnet-option", "filters=8", "--vnet-option", "dropout=0.0", "--no-report"]


def _slices_of(condition: str, case: str, n: int, first: Path, rng) -> list:
    """The ``n`` slices the clinician corrects on ``case``: random ones through the structure, or
    the flags of today's rule (the product's review_from_maps on the first run's saved maps)."""
    gt = read_label(HIPPOCAMPUS / "labels" / f"{case}.nii.gz").array
    if condition == "random":
        return sorted(int(v) for v in rng.choice(structure_slices(gt), size=n, replace=False))
    from SFRSegmenterLib.confidence import review_from_maps
    from SFRSegmenterLib.io import read_image

    conf = read_image(first / "pseudo" / f"{case}_confidence.nii.gz").array
    label = read_label(first / "pseudo" / f"{case}.nii.gz").array
    return sorted(int(i) for i, _ in review_from_maps(case, conf, label, k=n).flagged_slices)


def run_corrections(args) -> dict:
    """Flagged (the first run's flags, from ``warm``) against random corrected slices and against
    the flags of today's rule, each followed by the same warm start from the ``warm``
    experiment's first run (its result file says which run, cases and slices)."""
    warm = json.loads((RESULTS / "clinician_warm.json").read_text())
    if int(warm["seed"]) != int(args.seed):
        raise SystemExit(f"clinician_warm.json is of seed {warm['seed']}; run 'warm --seed {args.seed}' first")
    work = Path(args.work) / f"warm-s{args.seed}"
    first = work / "p" / "runs" / warm["first_run"]["run"]
    labeled0 = warm["labeled"]
    unlabeled0 = [e["case"] for e in json.loads((first / "review.json").read_text())["cases"]]
    chosen = warm["corrected_cases"]
    rest = [c for c in unlabeled0 if c not in chosen]
    validation = sorted({r["case"] for r in json.loads((first / "metrics.json").read_text())["validation"]["cases"]})
    previous = RESULTS / "clinician_corrections.json"
    out = json.loads(previous.read_text()) if previous.exists() else {}
    if out.get("first", {}).get("run") not in (None, first.name):
        out = {}  # another first run: start the record again
    out.update({"experiment": "corrections", "seed": args.seed, "cases": chosen, "rest": rest, "validation": validation,
                "flagged_slices": warm["corrected_slices"], "slices": sum(len(v) for v in warm["corrected_slices"].values())})
    out["first"] = {"run": first.name}
    out["flagged"] = {"run": warm["warm_start"]["run"], "slices": warm["corrected_slices"]}
    for cond in args.conditions:
        rng = np.random.default_rng([int(args.seed), 21])
        slices = {c: _slices_of(cond, c, len(warm["corrected_slices"][c]), first, rng) for c in chosen}
        corrected = {c: sparse_label(read_label(HIPPOCAMPUS / "labels" / f"{c}.nii.gz").array, v) for c, v in slices.items()}
        root = work / cond / "p"
        if root.parent.exists():
            shutil.rmtree(root.parent)
        root.parent.mkdir(parents=True)
        init_hippocampus(root, {**{c: None for c in labeled0}, **corrected}, rest, args.validation)
        (root / "runs").mkdir(exist_ok=True)
        shutil.copytree(first, root / "runs" / first.name, copy_function=os.link)
        timing = finish(timed("run", root, *warm_settings_of(args), "--warm-start", first.name))
        out[cond] = {"run": str(jobs.run_dir(root).relative_to(work)), "slices": slices, **timing}
    runs = {"first": first, "flagged": work / "p" / "runs" / out["flagged"]["run"]}
    runs.update({c: work / out[c]["run"] for c in ("random", "spread") if c in out})
    for name, run in runs.items():
        out[name].update(unlabeled=mean_dice_of(run, "pseudo_labels", rest), validation=mean_dice_of(run, "validation", validation))
    for cond in runs:
        if cond != "first":
            out[cond]["gain_per_slice"] = {part: (out[cond][part] - out["first"][part]) / out["slices"]
                                           for part in ("unlabeled", "validation")}
    return out


def run_next(args) -> dict:
    """The suggested next case (``label_next``'s first) against random unlabeled cases, each
    labeled whole and followed by the same warm start from the ``warm`` experiment's first run."""
    warm = json.loads((RESULTS / "clinician_warm.json").read_text())
    work = Path(args.work) / f"warm-s{args.seed}"
    labeled0 = SAMPLE_CASES[:2]
    if int(warm["seed"]) == int(args.seed):  # the first run of 'warm'
        first = work / "p" / "runs" / warm["first_run"]["run"]
        labeled0 = warm["labeled"]
    else:  # another seed: this experiment's own first run, as 'warm' makes it
        root = work / "p"
        if not (root / "runs").is_dir() or not any(jobs.read_status(r).get("state") == "done"
                                                  for r in (root / "runs").iterdir() if r.is_dir()):
            if work.exists():
                shutil.rmtree(work)
            work.mkdir(parents=True)
            init_hippocampus(root, {c: None for c in labeled0}, SAMPLE_CASES[2:2 + args.unlabeled], args.validation)
            finish(timed("run", root, *warm_settings_of(args), "--sam-option", f"embedding_cache={args.embedding_cache}",
                         "--iterations-sam", args.iterations_sam, "--iterations-vnet", args.iterations_vnet))
        first = wait_done(root)
    review = json.loads((first / "review.json").read_text())
    unlabeled0 = [e["case"] for e in review["cases"]]
    # today's ranking of the first run's review entries (with their per-slice confidences, as
    # the pipeline ranks them), so a change of the rule is measured without a new first run
    slices = json.loads((first / "slices.json").read_text())
    ranked = rank_cases([{**e, "slice_confidence": slices[e["case"]]["slice_confidence"]} for e in review["cases"]])
    suggested = ranked[0]["case"]
    rng = np.random.default_rng([int(args.seed), 25])
    others = [c for c in unlabeled0 if c != suggested]
    randoms = [str(c) for c in rng.choice(others, size=min(int(args.draws), len(others)), replace=False)]
    scored = [c for c in unlabeled0 if c != suggested and c not in randoms]
    validation = sorted({r["case"] for r in json.loads((first / "metrics.json").read_text())["validation"]["cases"]})
    out = {"experiment": "next", "seed": args.seed, "first": {"run": first.name}, "suggested": suggested,
           "label_next": [e["case"] for e in ranked], "label_next_of_the_run": [e["case"] for e in review["label_next"]],
           "randoms": randoms, "scored": scored,
           "validation": validation, "conditions": {}}
    for n, case in enumerate([suggested, *randoms]):
        name = "suggested" if n == 0 else f"random-{n}"
        folder = work / "next" / case  # one folder per labeled case: a draw that repeats reuses its run
        done = folder / "bench-condition.json"
        record = json.loads(done.read_text()) if done.exists() else {}
        reused = bool(args.reuse and record.get("first") == first.name and (work / record.get("run", "-") / "metrics.json").exists())
        if not reused:
            if folder.exists():
                shutil.rmtree(folder)
            root = folder / "p"
            root.mkdir(parents=True)
            init_hippocampus(root, {**{c: None for c in labeled0}, case: None}, [c for c in unlabeled0 if c != case], args.validation)
            (root / "runs").mkdir(exist_ok=True)
            shutil.copytree(first, root / "runs" / first.name, copy_function=os.link)
            timing = finish(timed("run", root, *warm_settings_of(args), "--warm-start", first.name))
            record = {"first": first.name, "case": case, "run": str(jobs.run_dir(root).relative_to(work)), **timing}
            done.write_text(json.dumps(record, indent=1))
        run = work / record["run"]
        out["conditions"][name] = {"case": case, "run": record["run"], "wall_s": record["wall_s"], "cpu_s": record["cpu_s"],
                                   "reused": reused,
                                   "unlabeled": mean_dice_of(run, "pseudo_labels", scored),
                                   "validation": mean_dice_of(run, "validation", validation)}
    out["first"].update(unlabeled=mean_dice_of(first, "pseudo_labels", scored), validation=mean_dice_of(first, "validation", validation))
    return out


# --------------------------------------------------------------------------- LA (prepared, not run here)

LA_COMMANDS = """# LA cpu-half (issue 21 rows on LA; prepared, not run on this 2-core machine)
# 88 annotated slices: 1 whole volume vs 8 volumes x 11 slices (bench/clinician.py sparse, with
#   HIPPOCAMPUS -> LA, SAMPLE_CASES -> the first 8 of train.list, VALIDATION -> the last 16,
#   and the full pipeline: sfr run PROJECT --sfr-plus instead of stage R only)
python bench/prep_la.py                       # the LA project (bench/_common.prepare_la)
sfr init la-whole  --images $LA/images --labels WHOLE1  --cases train.list --labeled 1 --validation 16
sfr init la-sparse --images $LA/images --labels SPARSE8 --cases train.list --labeled 8 --validation 16
sfr run la-whole --sfr-plus ; sfr run la-sparse --sfr-plus   # seeds 1337 and 1: --seed S
# warm start after correcting 5 flagged slices on 3 cases: bench/clinician.py warm on LA
sfr run la --sfr-plus; (corrections) ; sfr run la --sfr-plus --warm-start ; sfr run la --sfr-plus
"""


def markdown(result: dict) -> str:
    if result["experiment"] == "sparse":
        lines = [f"# Sparse vs whole-volume labels at equal effort ({result['effort_slices']} annotated slices)", "",
                 "Hippocampus, stage R only (supervised slim V-Net, the demo's settings, "
                 f"{result['iterations']} iterations), Dice on {len(result['validation'])} held-out cases.", "",
                 "| condition | seed | annotated slices per case | Dice class 1 | Dice class 2 | mean | train s |",
                 "|---|---|---|---|---|---|---|"]
        for r in result["rows"]:
            lines.append(f"| {r['condition']} | {r['seed']} | {', '.join(map(str, r['annotated_slices'].values()))} | "
                         f"{100 * r['dice_per_class']['1']:.1f} | {100 * r['dice_per_class']['2']:.1f} | "
                         f"{100 * r['mean_dice']:.1f} | {r['train_s']} |")
        for cond in ("whole", "sparse"):
            v = [100 * r["mean_dice"] for r in result["rows"] if r["condition"] == cond]
            lines.append(f"\n{cond}: mean {np.mean(v):.1f} (spread {min(v):.1f} .. {max(v):.1f}) over {len(v)} seed(s)")
        return "\n".join(lines) + "\n"
    if result["experiment"] == "next":
        lines = [f"# Which case to label next: the suggested case vs random ones (hippocampus, seed {result['seed']})", "",
                 "The first run of clinician_warm.md (at its seed; at another seed this experiment's own, the same settings); the clinician labels one more whole case, the first of that run's "
                 f"`label_next` ({result['suggested']}) or a random unlabeled case (seeded draws), then the same warm start "
                 f"(a fifth of the first run's iterations). Dice % on the {len(result['scored'])} unlabeled cases no condition "
                 f"labeled ({', '.join(result['scored'])}) and the {len(result['validation'])} validation cases.", "",
                 "| condition | case labeled | Dice unlabeled | Dice validation | mean of both | wall s |", "|---|---|---|---|---|---|"]
        f = result["first"]
        lines.append(f"| first run (no new label) | - | {100 * f['unlabeled']:.1f} | {100 * f['validation']:.1f} | "
                     f"{50 * (f['unlabeled'] + f['validation']):.1f} | - |")
        for name, r in result["conditions"].items():
            lines.append(f"| {name} | {r['case']} | {100 * r['unlabeled']:.1f} | {100 * r['validation']:.1f} | "
                         f"{50 * (r['unlabeled'] + r['validation']):.1f} | {r['wall_s']}{' (run reused)' if r.get('reused') else ''} |")
        rand = [r for k, r in result["conditions"].items() if k.startswith("random")]
        if rand and "suggested" in result["conditions"]:
            s = result["conditions"]["suggested"]
            for part in ("unlabeled", "validation"):
                v = [100 * r[part] for r in rand]
                lines.append(f"\n{part}: suggested {100 * s[part]:.1f} vs random mean {np.mean(v):.1f} "
                             f"(spread {min(v):.1f} .. {max(v):.1f}, {len(v)} draws): {100 * s[part] - np.mean(v):+.1f}")
        lines.append("\nThe label_next ranking of the first run (today's rule): " + ", ".join(result["label_next"]))
        if result.get("label_next_of_the_run") and result["label_next_of_the_run"] != result["label_next"]:
            lines.append("\nThe run's own review.json (the rule it ran with): " + ", ".join(result["label_next_of_the_run"]))
        return "\n".join(lines) + "\n"
    if result["experiment"] == "corrections":
        lines = [f"# Flagged vs random corrected slices (hippocampus, seed {result['seed']})", "",
                 f"The first run of clinician_warm.md; on {', '.join(result['cases'])}, {result['slices']} slices in all "
                 "get the ground truth, then the same warm start (60 SAM / 80 V-Net iterations): the slices the first run "
                 "flagged (top-5 by expected wrong voxels, the rule of that run), as many random slices through the "
                 "structure, or the flags of today's rule (spread out, `confidence.FLAG_SPREAD`, computed on the first "
                 f"run's saved maps). Dice % on the {len(result['rest'])} still-unlabeled cases and the "
                 f"{len(result['validation'])} validation cases; gain over the first run per corrected slice.", "",
                 "| condition | slices per case | Dice unlabeled | Dice validation | gain per slice unlabeled | gain per slice validation |",
                 "|---|---|---|---|---|---|"]
        f = result["first"]
        lines.append(f"| first run (no correction) | - | {100 * f['unlabeled']:.1f} | {100 * f['validation']:.1f} | - | - |")
        names = {"flagged": "flagged (first run's rule: top 5)", "random": "random through the structure",
                 "spread": "flagged, today's rule (spread out)"}
        for cond in ("flagged", "random", "spread"):
            if cond not in result:
                continue
            r = result[cond]
            lines.append(f"| {names[cond]} | {'; '.join(f'{c}: {v}' for c, v in r['slices'].items())} | {100 * r['unlabeled']:.1f} | "
                         f"{100 * r['validation']:.1f} | {100 * r['gain_per_slice']['unlabeled']:+.2f} | "
                         f"{100 * r['gain_per_slice']['validation']:+.2f} |")
        lines.append("\nOne seed, one set of cases: a difference of a point is within the noise of a warm start.")
        return "\n".join(lines) + "\n"
    lines = ["# Warm start after corrections (hippocampus, sfr run, seed %s)" % result["seed"], "",
             f"Corrected: 5 flagged slices on {', '.join(result['corrected_cases'])} (the top 3 of label_next), "
             "ground truth on those slices, 255 elsewhere.", "",
             "| run | iterations (SAM, V-Net) | wall s | CPU s | stage s | Dice unlabeled % | Dice validation % |",
             "|---|---|---|---|---|---|---|"]
    for key, iters in (("first_run", result["iterations"]["full"]), ("warm_start", result["iterations"]["warm"]),
                       ("full_after", result["iterations"]["full"])):
        r = result[key]
        pl = r.get("pseudo_labels", {}).get("mean_dice")
        va = r.get("validation", {}).get("mean_dice")
        lines.append(f"| {key} | {iters} | {r.get('wall_s', '-')} | {r.get('cpu_s', '-')} | {r['stage_s']} | "
                     f"{'-' if pl is None else f'{100 * pl:.1f}'} | "
                     f"{'-' if va is None else f'{100 * va:.1f}'} |")
    w, f = result["warm_start"], result["full_after"]
    lines.append(f"\nwarm start / full run after the same corrections: wall {100 * w['wall_s'] / f['wall_s']:.0f} %, "
                 f"CPU {100 * w['cpu_s'] / f['cpu_s']:.0f} %, stage seconds {100 * w['stage_s'] / f['stage_s']:.0f} % "
                 "(both ran at the same time, on the same loaded machine)")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", choices=("sparse", "warm", "corrections", "next", "la-commands"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337, 1])
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--iterations-sam", type=int, default=150)
    ap.add_argument("--iterations-vnet", type=int, default=300)
    ap.add_argument("--unlabeled", type=int, default=8, help="warm: unlabeled cases before the corrections")
    ap.add_argument("--validation", type=int, default=4, help="warm: validation cases")
    ap.add_argument("--embedding-cache", type=int, default=64, help="warm: stage F's cached mosaics (the demo's 64)")
    ap.add_argument("--reuse-first", action="store_true", help="warm: the first run is in the work folder (or under way)")
    ap.add_argument("--conditions", nargs="+", choices=("random", "spread"), default=["random", "spread"],
                    help="corrections: the conditions to run (the others' results are kept)")
    ap.add_argument("--reuse", action="store_true",
                    help="next: a case whose warm start from the same first run is in the work folder is not run again")
    ap.add_argument("--draws", type=int, default=3, help="next: random cases labeled instead of the suggested one")
    ap.add_argument("--work", default="/tmp/sfr-bench-clinician")
    ap.add_argument("--tag", default="", help="appended to the results' name (clinician_<experiment>[_s<seed>]_<tag>)")
    args = ap.parse_args()
    if args.experiment == "la-commands":
        print(LA_COMMANDS)
        return
    import torch

    torch.set_num_threads(1)
    t0 = time.monotonic()
    result = {"sparse": run_sparse, "warm": run_warm, "corrections": run_corrections, "next": run_next}[args.experiment](args)
    result.update(machine=machine(1), wall_s=round(time.monotonic() - t0, 1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"clinician_{args.experiment}" + (f"_s{args.seed}" if args.experiment == "next" else "") + (f"_{args.tag}" if args.tag else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
