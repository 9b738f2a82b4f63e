"""``sfr run --processes 2`` (torchrun, gloo on the CPU) against one process: results and wall time.

    python bench/run_processes.py [--iterations-sam 60 --iterations-vnet 100] [--pairs 1]
                                  [--work /tmp/sfr-bench-processes]

Each condition is a real ``sfr run`` on a fresh copy of the bundled sample project (what ``sfr
demo`` makes: 2 labeled, 10 unlabeled with hidden labels), plain SFR, the default budget (``fast``
on a CPU) with a shorter schedule, ``--no-report``; conditions alternate (1, 2, 1, 2, ...) so a
drift of the machine's speed hits both. No thread setting is given: one process uses torch's
default threads, two processes get ``cores / 2`` each (what the product does). Results compared:
stage keys, each stage's seconds, the V-Net's pseudo-label Dice (hidden labels) and the validation
Dice from each run's metrics.json, and voxel agreement of the published labels.  With the fast
budget's V-Net (batch norm) the result depends on the number of processes by design (docs/run.md);
``--exact`` uses instance norm, as ``Testing/test_run_processes.py`` does, where it must not.

Results: ``bench/results/run_processes.{json,md}``.
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

from _common import REPO, machine

import numpy as np  # noqa: E402

RESULTS = REPO / "bench" / "results"


def one_run(work: Path, n: int, k: int, args) -> dict:
    from SFRSegmenterLib.commands.demo import make_demo_project
    from SFRSegmenterLib.report_budget import _estimate  # the run's last estimate event, as its report reads it

    root = work / f"p{n}-{k}"
    if root.exists():
        shutil.rmtree(root)
    make_demo_project(root)
    cmd = [sys.executable, "-m", "SFRSegmenterLib", "--progress", "none", "run", str(root), "--processes", str(n),
           "--iterations-sam", str(args.iterations_sam), "--iterations-vnet", str(args.iterations_vnet),
           "--seed", str(args.seed), "--no-report"]
    if args.exact:
        cmd += ["--vnet-option", 'norm="instancenorm"']
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(REPO)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"sfr run --processes {n} failed:\n{proc.stderr[-3000:]}")
    run = root / "runs" / (root / "runs" / "latest").read_text().strip()
    stages = json.loads((run / "stages.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    est = _estimate(run / "events.jsonl") or {}
    return {"processes": n, "pair": k, "run": str(run), "wall_s": round(wall, 1),
            "estimate_s": est.get("seconds"),
            "stage_s": {s: v.get("seconds") for s, v in stages.items()},
            "keys": {s: v.get("key") for s, v in stages.items()},
            "pseudo_dice": metrics["pseudo_labels"]["mean"]["dice"],
            "validation_dice": (metrics.get("validation") or {}).get("mean", {}).get("dice")}


def agreement(a: str, b: str) -> float:
    """Share of voxels with the same published label in both runs, over all unlabeled cases."""
    from SFRSegmenterLib.io import read_label

    same = total = 0
    for f in sorted((Path(a) / "pseudo").glob("*.nii.gz")):
        if f.name.endswith(("_confidence.nii.gz", "_lowconf.nii.gz")):
            continue
        x, y = read_label(f).array, read_label(Path(b) / "pseudo" / f.name).array
        same += int((x == y).sum())
        total += x.size
    return same / total


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def markdown(res: dict) -> str:
    lines = ["# `sfr run`: 2 processes (torchrun, gloo) against 1 on the CPU", "",
             f"Bundled sample (2 labeled, 10 unlabeled with hidden labels, no validation cases), plain SFR, budget fast with "
             f"{res['iterations']} iterations (SAM, V-Net), seed {res['seed']}, "
             f"{'instance norm (exact)' if res['exact'] else 'the budget V-Net (batch norm)'}; "
             f"each run in a fresh project; order 1, 2, 1, 2, ... Machine: {json.dumps(res['machine'])}", "",
             "| processes | pair | wall s | estimate s | stitch+F s | pseudolabel s | retrain s | confidence s | metrics s | "
             "Dice pseudo | Dice validation |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        s = r["stage_s"]
        lines.append(f"| {r['processes']} | {r['pair']} | {r['wall_s']} | {r['estimate_s']} | "
                     f"{(s.get('stitch') or 0) + (s.get('finetune-r0') or 0):.1f} | {s.get('pseudolabel-r0')} | "
                     f"{s.get('retrain-r0')} | {s.get('confidence-r0')} | {s.get('metrics')} | "
                     f"{100 * r['pseudo_dice']:.2f} | {_pct(r['validation_dice'])} |")
    lines += ["", "| pair | wall ratio 2 / 1 | stage R ratio | same stage keys | published labels agree | "
              "Dice pseudo 2 - 1 | Dice validation 2 - 1 |", "|---|---|---|---|---|---|---|"]
    for p in res["pairs"]:
        lines.append(f"| {p['pair']} | {p['wall_ratio']:.2f} | {p['retrain_ratio']:.2f} | {p['same_keys']} | "
                     f"{100 * p['agreement']:.3f} % | {100 * p['pseudo_diff']:+.2f} | "
                     f"{'-' if p['validation_diff'] is None else format(100 * p['validation_diff'], '+.2f')} |")
    lines += ["", "On one 2-core machine the two processes share the cores one process used (each gets half the "
              "threads), and each parallel stage pays the start of two Python processes: the ratio says what "
              "`--processes 2` costs or saves there; it is meant for GPUs (docs/run.md)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations-sam", type=int, default=60)
    ap.add_argument("--iterations-vnet", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--pairs", type=int, default=1)
    ap.add_argument("--exact", action="store_true", help="instance norm: the two must give the same result")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sfr-bench-processes"))
    ap.add_argument("--out", default="run_processes")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    runs = []
    for k in range(args.pairs):
        for n in (1, 2):
            runs.append(one_run(args.work, n, k, args))
            print(json.dumps(runs[-1]), flush=True)
    pairs = []
    for k in range(args.pairs):
        a, b = (next(r for r in runs if r["pair"] == k and r["processes"] == n) for n in (1, 2))
        pairs.append({"pair": k, "wall_ratio": b["wall_s"] / a["wall_s"],
                      "retrain_ratio": (b["stage_s"]["retrain-r0"] or 0) / (a["stage_s"]["retrain-r0"] or 1),
                      "same_keys": a["keys"] == b["keys"], "agreement": agreement(a["run"], b["run"]),
                      "pseudo_diff": b["pseudo_dice"] - a["pseudo_dice"],
                      "validation_diff": (None if a["validation_dice"] is None or b["validation_dice"] is None
                                          else b["validation_dice"] - a["validation_dice"])})
    res = {"iterations": [args.iterations_sam, args.iterations_vnet], "seed": args.seed, "exact": args.exact,
           "machine": machine(0), "runs": runs, "pairs": pairs,
           "wall_ratio_median": float(np.median([p["wall_ratio"] for p in pairs]))}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(res, indent=1) + "\n")
    (RESULTS / f"{args.out}.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
