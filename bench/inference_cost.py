"""Sliding-window inference: accuracy vs cost of the window overlap (issue 14).

For each trained V-Net (one per training seed) and each validation case, every stride setting runs
back to back on one CPU thread, in an order rotated from case to case (the machine is shared:
seconds are compared as ratios to stride = window measured next to them).  Settings:

  overlap 0       stride = window (the cheapest cover of the volume)
  overlap 0.25    stride = ceil(0.75 window)
  overlap 0.5     stride = ceil(0.5 window); also with Gaussian blending (``0.5 gaussian``)
  overlap 0.75    stride = ceil(0.25 window): 8x16x16 for LA's 32x64x64, the stride
                  bench/retrain_quality.py's cpu-half protocol evaluates at
  paper           the paper's LA stride (4, 18, 18) for 80x112x112, scaled to the window (the old default)

Data sets:
  hippocampus  V-Nets trained on the 12 bundled sample cases (crop 16x16x16, 1200 iterations, batch 4,
               supervised, one thread: ``--train``), scored on 16 other cases of
               ../shared/data/hippocampus (Dice and 95HD per class, on the image grid).  Also
               ``sfr predict`` on the 12 bundled cases as a user runs it: old default (paper) vs new.
  la           V-Nets at LA half resolution (bench/la_half.py data, crop 32x64x64), scored like
               bench/retrain_quality.py's cpu-half protocol: the foreground probability resampled
               linearly to the original 0.625 mm grid, thresholded at 0.5, against the original labels.

    python bench/inference_cost.py hippocampus --train --models s1337=/tmp/ic/h1337 s1=/tmp/ic/h1
    python bench/inference_cost.py la --models s1337=DIR s1=DIR

Results accumulate per data set in bench/results/inference_cost.json; the Markdown table is rebuilt
from it on every run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import HIPPOCAMPUS, LA, machine  # noqa: E402
from SFRSegmenterLib.io import read_image  # noqa: E402
from SFRSegmenterLib.metrics import binary_metrics  # noqa: E402
from SFRSegmenterLib.retrain.inference import load_model, predict_volume  # noqa: E402
from SFRSegmenterLib.sliding import Overlap, count_windows, resolve_stride  # noqa: E402

RESULTS = REPO / "bench" / "results"
SAMPLE = REPO / "SFRSegmenterLib" / "sample_data" / "hippocampus"
HALF_DATA = Path("/tmp/sfr_la_half/data")
SETTINGS = {  # name -> (stride spec, blend)
    "overlap 0": (Overlap(0.0), "constant"),
    "overlap 0.25": (Overlap(0.25), "constant"),
    "overlap 0.5": (Overlap(0.5), "constant"),
    "overlap 0.5 gaussian": (Overlap(0.5), "gaussian"),
    "overlap 0.75": (Overlap(0.75), "constant"),
    "paper": ("paper", "constant"),
}


def hippocampus_cases(n: int) -> list:
    """``n`` cases of the shared hippocampus set that are not bundled (the models' training set)."""
    bundled = {p.name for p in (SAMPLE / "images").iterdir()}
    names = sorted(p.name for p in (HIPPOCAMPUS / "images").iterdir() if p.name not in bundled)
    step = max(1, len(names) // n)
    return [(f.split(".")[0], HIPPOCAMPUS / "images" / f, HIPPOCAMPUS / "labels" / f) for f in names[::step][:n]]


def la_cases(half_data: Path) -> list:
    names = (LA / "train.list").read_text().split()[-16:]  # the validation cases of every LA bench
    return [(c, half_data / "images" / f"{c}.nii.gz", LA / "labels" / f"{c}.nii.gz") for c in names]


def train_hippocampus(out: Path, seed: int, iterations: int) -> None:
    """A small V-Net on the bundled sample, as a new user would train one (``sfr retrain``)."""
    if (out / "model.pt").exists():
        return
    project = out.parent / "hippocampus_project"
    if not (project / "sfr-project.json").exists():
        subprocess.run([sys.executable, "-m", "SFRSegmenterLib", "init", str(project), "--images", str(SAMPLE / "images"),
                        "--labels", str(SAMPLE / "labels")], check=True, cwd=REPO)
    subprocess.run([sys.executable, "-m", "SFRSegmenterLib", "--progress", "none", "retrain", str(project),
                    "--ssl", "supervised", "--no-sam", "--crop", "16", "16", "16", "--iterations", str(iterations),
                    "--batch", "4", "0", "--seed", str(seed), "--device", "cpu", "--threads", "1", "--out", str(out)],
                   check=True, cwd=REPO)


def score_hippocampus(prob: np.ndarray, label_path: Path, image) -> dict:
    gt = np.rint(read_image(label_path).array).astype(np.int16)
    pred = prob.argmax(0)
    spacing = image.spacing_zyx
    rows = {c: binary_metrics(pred == c, gt == c, spacing) for c in (1, 2)}
    dice = [rows[c]["dice"] for c in rows if rows[c]["dice"] is not None]
    hd = [rows[c]["hd95_mm"] for c in rows if rows[c]["hd95_mm"] is not None]
    return {"dice": float(np.mean(dice)) if dice else None, "hd95": float(np.mean(hd)) if hd else None,
            "per_class": {str(c): {"dice": rows[c]["dice"], "hd95": rows[c]["hd95_mm"]} for c in rows}}


def score_la(prob: np.ndarray, label_path: Path, image_path: Path) -> dict:
    """The cpu-half protocol's scoring: foreground probability back onto the original grid."""
    import SimpleITK as sitk

    half = sitk.ReadImage(str(image_path))
    fg = sitk.GetImageFromArray(np.ascontiguousarray(prob[1], dtype=np.float32))
    fg.CopyInformation(half)
    ref = sitk.ReadImage(str(label_path))
    full = sitk.GetArrayFromImage(sitk.Resample(fg, ref, sitk.Transform(), sitk.sitkLinear, 0.0)) >= 0.5
    gt = sitk.GetArrayFromImage(ref) > 0
    m = binary_metrics(full, gt, ref.GetSpacing()[::-1])
    return {"dice": m["dice"], "hd95": m["hd95_mm"]}


def run_model(tag: str, model_dir: Path, cases: list, settings: dict, dataset: str) -> dict:
    model = load_model(model_dir, "cpu")
    window = tuple(model.sfr_meta["window"])
    names = list(settings)
    per_case = []
    for i, (case, image_path, label_path) in enumerate(cases):
        image = read_image(image_path)
        order = names[i % len(names):] + names[: i % len(names)]  # rotated: no setting always first
        row = {"case": case, "shape": list(image.shape), "settings": {}}
        for name in order:
            spec, blend = settings[name]
            stride = resolve_stride(window, spec)
            t0 = time.perf_counter()
            prob = predict_volume(model, image, stride=stride, blend=blend)
            seconds = time.perf_counter() - t0
            scores = score_la(prob, label_path, image_path) if dataset == "la" else score_hippocampus(prob, label_path, image)
            row["settings"][name] = {"seconds": round(seconds, 4), "stride": list(stride),
                                     "windows": count_windows(image.shape, window, stride), **scores}
        base = row["settings"]["overlap 0"]["seconds"]
        for entry in row["settings"].values():
            entry["ratio"] = round(entry["seconds"] / base, 3)
        per_case.append(row)
        print(tag, case, {n: (round(e["dice"] or 0, 4), e["seconds"]) for n, e in row["settings"].items()}, flush=True)
    return {"model": str(model_dir), "window": list(window), "cases": per_case, "summary": summarize(per_case, names)}


def summarize(per_case: list, names) -> dict:
    out = {}
    for name in names:
        entries = [r["settings"][name] for r in per_case]
        dice = [e["dice"] for e in entries if e["dice"] is not None]
        hd = [e["hd95"] for e in entries if e["hd95"] is not None]
        out[name] = {"dice": float(np.mean(dice)) * 100 if dice else None, "hd95": float(np.mean(hd)) if hd else None,
                     "seconds": float(np.mean([e["seconds"] for e in entries])),
                     "ratio": float(np.median([e["ratio"] for e in entries])),
                     "windows": float(np.mean([e["windows"] for e in entries])), "stride": entries[0]["stride"]}
    return out


def cli_timing(model_dir: Path, work: Path) -> dict:
    """``sfr predict`` on the 12 bundled cases, one thread: the old default (paper) and the new one."""
    out = {}
    for name, extra in (("new default", []), ("paper (old default)", ["--stride", "paper"]),
                        ("new default, again", [])):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "SFRSegmenterLib", "--progress", "none", "predict", "--model", str(model_dir),
                        "--images", str(SAMPLE / "images"), "--out", str(work / "cli" / name.split()[0]),
                        "--device", "cpu", "--threads", "1", *extra], check=True, cwd=REPO, capture_output=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
        out[name] = round(time.perf_counter() - t0, 2)
        print("sfr predict, 12 bundled cases,", name, out[name], "s", flush=True)
    return out


def write_outputs(dataset: str, entry: dict) -> None:
    """Store ``entry`` under ``dataset`` in the JSON as it is now on disk (two data sets may run at
    the same time), then rebuild the Markdown from all of it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "inference_cost.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[dataset] = entry
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, path)
    md = ["# Sliding-window inference: accuracy vs cost (issue 14)", "",
          "Generated by `bench/inference_cost.py`. One CPU thread on a shared, loaded 2-core machine "
          "(other benchmarks running): seconds are indicative, the **ratio** to stride = window (median "
          "over cases, each setting measured back to back on the same case, order rotated) is the "
          "comparable number. Dice in %, 95HD in mm, means over the validation cases. "
          "Not measured: two threads (no quiet moment on this machine) and GPU (no device lent).", ""]
    for dataset, entry in results.items():
        md += [f"## {dataset}", "", entry.get("about", ""), ""]
        models = entry.get("models", {})
        names = list(next(iter(models.values()))["summary"]) if models else []
        head = "| setting | stride | windows / volume | " + " | ".join(
            f"Dice {t} | 95HD {t}" for t in models) + " | s / volume | ratio to overlap 0 |"
        md += [head, "|" + "---|" * (head.count("|") - 1)]
        for name in names:
            rows = [models[t]["summary"][name] for t in models]
            cells = " | ".join(f"{r['dice']:.2f} | {r['hd95']:.2f}" if r["dice"] is not None else "- | -" for r in rows)
            md.append(f"| {name} | {'x'.join(map(str, rows[0]['stride']))} | {np.mean([r['windows'] for r in rows]):.0f} | "
                      f"{cells} | {np.mean([r['seconds'] for r in rows]):.2f} | {np.mean([r['ratio'] for r in rows]):.2f} |")
        if models:
            seeds = list(models)
            if len(seeds) == 2:
                a, b = (models[s]["summary"]["overlap 0"]["dice"] for s in seeds)
                md += ["", f"Noise between the two training seeds (overlap 0): {abs(a - b):.2f} Dice points."]
        if entry.get("cli"):
            md += ["", "`sfr predict` on the 12 bundled hippocampus cases, one thread, whole command (wall s):", "",
                   "| run | seconds |", "|---|---|"] + [f"| {k} | {v} |" for k, v in entry["cli"].items()]
        md.append("")
    (RESULTS / "inference_cost.md").write_text("\n".join(md))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dataset", choices=("hippocampus", "la"))
    ap.add_argument("--models", nargs="+", default=[], metavar="TAG=DIR", help="trained models, one per seed")
    ap.add_argument("--train", action="store_true", help="hippocampus: train missing models (seed from the tag sN)")
    ap.add_argument("--iterations", type=int, default=1200)
    ap.add_argument("--cases", type=int, default=16, help="hippocampus validation cases")
    ap.add_argument("--max-cases", type=int, help="LA: the first N validation cases only")
    ap.add_argument("--half-data", type=Path, default=HALF_DATA)
    ap.add_argument("--work", type=Path, default=Path("/tmp/sfr_inference_cost"))
    ap.add_argument("--no-cli", action="store_true", help="hippocampus: skip the sfr predict timing")
    ap.add_argument("--skip", nargs="+", default=[], metavar="SETTING", help="leave these settings out (e.g. paper)")
    ap.add_argument("--key", help="store the results under this name (default: the data set; --join merges)")
    ap.add_argument("--join", nargs="+", metavar="KEY", help="only merge the models stored under KEYs into the data set's entry")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.join:  # seeds measured by separate processes at the same time, one entry
        stored = json.loads((RESULTS / "inference_cost.json").read_text())
        entry = stored[args.dataset]
        for key in args.join:
            entry["models"].update(stored.pop(key)["models"])
        (RESULTS / "inference_cost.json").write_text(json.dumps(stored, indent=2) + "\n")
        write_outputs(args.dataset, entry)
        return 0
    models = dict(item.split("=", 1) for item in args.models)
    if args.dataset == "hippocampus":
        if args.train:
            for tag, folder in models.items():
                train_hippocampus(Path(folder), int(tag.lstrip("s")), args.iterations)
        cases, settings = hippocampus_cases(args.cases), SETTINGS
        about = (f"V-Nets (crop 16x16x16, {args.iterations} iterations, batch 4, supervised on the 12 bundled cases, one per "
                 f"seed), {len(cases)} other cases of the Decathlon hippocampus set; Dice and 95HD are the means "
                 "of anterior and posterior.")
    else:
        cases, settings = la_cases(args.half_data)[: args.max_cases], SETTINGS
        about = (f"V-Nets at LA half resolution (crop 32x64x64, 400 iterations, supervised on the first 16 cases "
                 f"of train.list, one per seed), the {len(cases)} validation cases (last 16 of train.list), scored "
                 "on the original 0.625 mm grid as bench/retrain_quality.py's cpu-half protocol.")
    settings = {k: v for k, v in settings.items() if k not in args.skip}
    if args.skip:
        about += f" Left out (cost): {', '.join(args.skip)}."
    entry = {"about": about, "machine": machine(1), "models": {}}
    for tag, folder in models.items():
        entry["models"][tag] = run_model(tag, Path(folder), cases, settings, args.dataset)
        write_outputs(args.key or args.dataset, entry)
    if args.dataset == "hippocampus" and not args.no_cli:
        entry["cli"] = cli_timing(Path(next(iter(models.values()))), args.work)
    entry["machine"]["load_avg_at_end"] = os.getloadavg()[0]
    write_outputs(args.key or args.dataset, entry)
    return 0


if __name__ == "__main__":
    sys.exit(main())
