"""Stage F speed and memory on CPU: fine-tuning step time, pseudo-label time per LA volume, RSS.

    python bench/sam_speed.py [--threads 1] [--smoke]

LiteMedSAM on the first LA case of train.list:
* LoRA fine-tuning step (batch 2, default layout: 16 x 128 x 128 crops, 4 x 4 grid, 256 canvas);
* frozen-encoder decoder step on cached embeddings (batch 2) and the encoder pass per mosaic;
* whole-volume pseudo-labelling of one LA volume with the default layout (window overlap 0.25)
  and with the quality bench's whole-slice layout (16 x 160 x 256, no overlap).
Results: bench/results/sam_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import REPO, machine, peak_rss_mb, prepare_la

import torch  # noqa: E402

from SFRSegmenterLib import events  # noqa: E402
from SFRSegmenterLib.finetune import FinetuneConfig, finetune  # noqa: E402
from SFRSegmenterLib.io import read_image  # noqa: E402
from SFRSegmenterLib.manifest import init_project  # noqa: E402
from SFRSegmenterLib.pseudolabel import load_sam_model, predict_probabilities  # noqa: E402


def timed_finetune(project, out, **kw):
    meta_path = Path(out) / "sam-model.json"
    t0 = time.monotonic()
    finetune(project, FinetuneConfig(device="cpu", save_every=1000, **kw), out_dir=out)
    wall = time.monotonic() - t0
    meta = json.loads(meta_path.read_text())
    return meta, wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lora-steps", type=int, default=3)
    ap.add_argument("--decoder-steps", type=int, default=10)
    ap.add_argument("--work", default="/tmp/sfr-bench-sam-speed")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--smoke", action="store_true", help="tiny test model on a bundled hippocampus case")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    events.configure("none")
    work = Path(args.work)
    backbone = "lite_medsam"
    if args.smoke:
        sample = REPO / "SFRSegmenterLib" / "sample_data" / "hippocampus"
        project = init_project(work / "smoke", sample / "images", sample / "labels", labeled=1,
                               validation=1, force=True)
        backbone, args.lora_steps, args.decoder_steps = "tiny_test", 2, 3
        whole_crop = (16, 64, 64)
    else:
        project = prepare_la(work / "la1", 1)
        whole_crop = (16, 160, 256)
    rows = {}
    meta, wall = timed_finetune(project, work / "lora", backbone=backbone, iterations=args.lora_steps)
    rows["lora_step_s"] = meta["train_seconds"] / args.lora_steps
    rows["lora_layout"] = meta["layout"]
    rows["trainable_parameters"] = meta["parameters"]
    n_cache = 4
    meta_c, wall_c = timed_finetune(project, work / "cached", backbone=backbone, iterations=args.decoder_steps,
                                    lora_rank=0, embedding_cache=n_cache, crop=whole_crop)
    rows["decoder_step_s"] = meta_c["train_seconds"] / args.decoder_steps
    rows["encoder_pass_s"] = (wall_c - meta_c["train_seconds"]) / n_cache  # upper bound (incl. setup)
    case = project.by_role("validation")[0] if project.by_role("validation") else project.cases[-1]
    image = read_image(project.image_path(case))
    rows["volume"] = {"case": case.name, "shape_dhw": list(image.shape)}
    for name, folder, overlap in (("default_layout_overlap_0.25", "lora", 0.25), ("whole_slices_overlap_0", "cached", 0.0)):
        model = load_sam_model(work / folder, "cpu")
        t0 = time.monotonic()
        probs = predict_probabilities(model, image, overlap=overlap)
        rows[f"pseudolabel_s_{name}"] = time.monotonic() - t0
        assert probs.shape[1:] == image.shape
    rows["peak_rss_mb"] = peak_rss_mb()
    payload = {"benchmark": "sam_speed", "backbone": backbone, "machine": machine(args.threads), "results": rows}
    out = work / "results" if args.smoke else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sam_speed.json").write_text(json.dumps(payload, indent=2) + "\n")
    md = [
        f"# Stage F speed on CPU ({backbone}, {args.threads} thread(s), shared 2-core machine, "
        f"load average {payload['machine']['load_avg_at_start']:.1f} at start)",
        "",
        "| measure | value |",
        "|---|---|",
        f"| LoRA fine-tuning step, batch 2 (s) | {rows['lora_step_s']:.2f} |",
        f"| frozen-encoder decoder step on cached embeddings, batch 2 (s) | {rows['decoder_step_s']:.2f} |",
        f"| encoder pass per mosaic incl. setup (s) | {rows['encoder_pass_s']:.2f} |",
        f"| pseudo-label one LA volume {tuple(image.shape)}, default layout, overlap 0.25 (s) | {rows['pseudolabel_s_default_layout_overlap_0.25']:.1f} |",
        f"| pseudo-label one LA volume, whole-slice layout, no overlap (s) | {rows['pseudolabel_s_whole_slices_overlap_0']:.1f} |",
        f"| peak RSS (MB) | {rows['peak_rss_mb']:.0f} |",
    ]
    (out / "sam_speed.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
