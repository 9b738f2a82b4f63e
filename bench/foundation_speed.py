"""Speed of the foundation on real LA volumes: reading, stitch/unstitch, metrics, sfr init.

    python bench/foundation_speed.py [--cases 8] [--threads 1]

Writes bench/results/foundation_speed.json and .md.  Times are medians of repeats on this
machine; compare ratios within one run only.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from medpy.metric import binary as mb  # noqa: E402
from scipy.ndimage import binary_dilation  # noqa: E402

from SFRSegmenterLib.io import read_image, read_label  # noqa: E402
from SFRSegmenterLib.metrics import binary_metrics  # noqa: E402
from SFRSegmenterLib.stitching import IGNORE_INDEX, make_plan, stitch, unstitch  # noqa: E402

LA = REPO.parent / "shared" / "data" / "la"
OUT = REPO / "bench" / "results"


def timed(fn, repeat=5):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = (LA / "train.list").read_text().split()[: args.cases]
    rows = {}

    read_t, stitch_t, unstitch_t, torch_t, metric_t, medpy_t = [], [], [], [], [], []
    for name in names:
        t = time.perf_counter()
        img = read_image(LA / "images" / f"{name}.nii.gz")
        lab = read_label(LA / "labels" / f"{name}.nii.gz", img)
        read_t.append(time.perf_counter() - t)
        # the paper's training crop (80, 112, 112) on a 1024 canvas, image + label
        crop = img.array[:80, :112, :112]
        plan = make_plan(crop.shape, 1024)
        canv = stitch(crop, plan)
        stitch_t.append(timed(lambda: (stitch(crop, plan), stitch(lab.array[:80, :112, :112], plan, fill=IGNORE_INDEX))))
        unstitch_t.append(timed(lambda: unstitch(canv, plan)))
        # whole-volume probability maps (2 classes) on the 256 LiteMedSAM canvas, torch
        probs = torch.rand((2,) + img.shape)
        plan256 = make_plan(img.shape, 256, grid=(4, 4))
        torch_t.append(timed(lambda: unstitch(stitch(probs, plan256), plan256), repeat=3))
        pred = binary_dilation(lab.array > 0, iterations=2)
        sp = img.spacing_zyx
        metric_t.append(timed(lambda: binary_metrics(pred, lab.array > 0, sp), repeat=3))
        medpy_t.append(timed(lambda: (mb.dc(pred, lab.array), mb.jc(pred, lab.array), mb.hd95(pred, lab.array, sp),
                                      mb.asd(pred, lab.array, sp), mb.hd95(pred, lab.array), mb.asd(pred, lab.array)), repeat=1))
    rows["read image+label (s/case)"] = statistics.median(read_t)
    rows["stitch LA crop 80x112x112 image+label, 1024 canvas (ms)"] = 1000 * statistics.median(stitch_t)
    rows["unstitch LA crop, 1024 canvas (ms)"] = 1000 * statistics.median(unstitch_t)
    rows["stitch+unstitch whole LA volume, 2-class probs, 256 canvas 4x4 scaled, torch (ms)"] = 1000 * statistics.median(torch_t)
    rows["metrics Dice/Jc/HD95/ASD mm+vox, ours (s/case)"] = statistics.median(metric_t)
    rows["same six numbers with medpy (s/case)"] = statistics.median(medpy_t)
    rows["speed-up of ours over medpy (x)"] = statistics.median(medpy_t) / statistics.median(metric_t)

    from SFRSegmenterLib.manifest import init_project

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        init_project(Path(tmp) / "p", LA / "images", labels=LA / "labels", cases=LA / "train.list", labeled=16, validation=16)
        rows["sfr init on all 80 LA cases, full checks (s)"] = time.perf_counter() - t

    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_threads": args.threads,
        "cases": len(names),
        "torch": torch.__version__,
        "results": {k: round(v, 4) for k, v in rows.items()},
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "foundation_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    md = ["# Foundation speed (LA volumes, CPU, %d thread(s), median over %d cases)" % (args.threads, len(names)), "",
          "| measurement | value |", "|---|---|"]
    md += [f"| {k} | {v:.4g} |" for k, v in rows.items()]
    (OUT / "foundation_speed.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
