"""Stage F on one GPU: ViT-B step time / peak memory and LiteMedSAM throughput (no network).

    python bench/gpu/sam_gpu.py            # on a CUDA machine, finishes in a few minutes
    python bench/gpu/sam_gpu.py --smoke    # tiny test model on CPU, seconds

1. SAM ViT-B with random weights (no checkpoint is reachable offline; speed and memory do not
   depend on the values), LoRA rank 4, batch 2 on a 1024 canvas, 2 classes: training step time
   and peak GPU memory for fp32 / bf16 autocast x with / without activation checkpointing.
2. LiteMedSAM (bundled weights): training steps/s (LoRA, batch 8) and inference images/s
   (batch 16), bf16 autocast.
3. End to end on the bundled hippocampus sample with LiteMedSAM on the GPU: ``finetune``
   (100 iterations) and ``pseudolabel`` (the sample's unlabeled cases), seconds.
Results: bench/results/sam_gpu.{json,md} (and $OUT/ when that variable is set).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from SFRSegmenterLib import events  # noqa: E402
from SFRSegmenterLib.finetune import FinetuneConfig, finetune  # noqa: E402
from SFRSegmenterLib.manifest import init_project  # noqa: E402
from SFRSegmenterLib.pseudolabel import pseudolabel  # noqa: E402
from SFRSegmenterLib.sam.loss import dice_ce_loss  # noqa: E402
from SFRSegmenterLib.sam.model import set_grad_checkpointing  # noqa: E402
from SFRSegmenterLib.sam import build_segmenter, count_parameters  # noqa: E402
from SFRSegmenterLib.stitching import IGNORE_INDEX  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_steps(model, device, batch, bf16, ckpt, warmup, steps):
    set_grad_checkpointing(model, ckpt)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1)
    S = model.canvas
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, S, S, generator=g).expand(-1, 3, -1, -1).contiguous().to(device)
    y = (torch.rand(batch, S, S, generator=g) > 0.7).long()
    y[:, :8] = IGNORE_INDEX
    y = y.to(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model.logits(x)
        loss = dice_ce_loss(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    set_grad_checkpointing(model, False)
    del opt
    return {"step_s": sum(times) / len(times), "peak_gib": peak, "final_loss": float(loss)}


@torch.no_grad()
def infer_rate(model, device, batch, bf16, warmup, steps):
    model.eval()
    S = model.canvas
    x = torch.rand(batch, 3, S, S, device=device)
    for i in range(warmup):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            model.logits(x)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            model.logits(x)
    sync(device)
    return batch * steps / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny test model on CPU")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args(argv)
    events.configure("none")
    t_start = time.monotonic()
    if args.smoke:
        device, vit, lite, warm, steps, iters = torch.device("cpu"), "tiny_test", "tiny_test", 1, 2, 3
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            print("sam_gpu: no CUDA GPU (use --smoke on CPU)", file=sys.stderr)
            return 2
        device, vit, lite, warm, steps, iters = torch.device("cuda"), "vit_b", "lite_medsam", 3, 10, 100
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    result = {
        "benchmark": "sam_gpu",
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (smoke)",
        "torch": torch.__version__,
        "vit": {"backbone": vit, "weights": "random", "batch": 2},
    }
    model = build_segmenter(vit, num_classes=2, lora_rank=4, random_weights=True).to(device)
    result["vit"]["parameters"] = count_parameters(model)
    result["vit"]["canvas"] = model.canvas
    rows = []
    for bf16 in (False, True):
        for ckpt in (False, True):
            r = train_steps(model, device, 2, bf16, ckpt, warm, steps)
            rows.append({"bf16": bf16, "checkpointing": ckpt, **r})
            print(f"{vit} bf16={bf16} ckpt={ckpt}: {r['step_s']:.3f} s/step, peak {r['peak_gib']} GiB", flush=True)
    result["vit"]["modes"] = rows
    result["vit"]["inference_images_per_s_bf16"] = infer_rate(model, device, 4, device.type == "cuda", warm, steps)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()

    lm = build_segmenter(lite, num_classes=2, lora_rank=4, random_weights=(lite == "tiny_test")).to(device)
    bf = device.type == "cuda"
    tr = train_steps(lm, device, 8, bf, False, warm, steps)
    result["lite"] = {
        "backbone": lite,
        "train_batch": 8,
        "train_step_s": tr["step_s"],
        "train_images_per_s": 8 / tr["step_s"],
        "train_peak_gib": tr["peak_gib"],
        "inference_images_per_s": infer_rate(lm, device, 16, bf, warm, steps),
    }
    del lm
    print(json.dumps(result["lite"]), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        sample = REPO / "SFRSegmenterLib" / "sample_data" / "hippocampus"
        project = init_project(Path(tmp) / "p", sample / "images", sample / "labels", labeled=2, validation=2)
        t0 = time.monotonic()
        model_dir = finetune(project, FinetuneConfig(backbone=lite, iterations=iters, device=device.type, save_every=50),
                             out_dir=Path(tmp) / "sam")
        ft_s = time.monotonic() - t0
        t0 = time.monotonic()
        recs = pseudolabel(project, model_dir, out_dir=Path(tmp) / "pseudo", device=device.type)
        pl_s = time.monotonic() - t0
        meta = json.loads((model_dir / "sam-model.json").read_text())
    result["end_to_end"] = {
        "data": "bundled hippocampus sample (2 labeled, 8 unlabeled)",
        "finetune_iterations": iters,
        "finetune_s": ft_s,
        "loss_first_last": [meta["loss_curve"][0], meta["loss_curve"][-1]],
        "pseudolabel_cases": len(recs),
        "pseudolabel_s": pl_s,
    }
    result["total_s"] = time.monotonic() - t_start
    out = Path(args.out) if not args.smoke else Path(tempfile.gettempdir()) / "sfr-sam-gpu-smoke"
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# Stage F on {result['device']} (torch {result['torch']})", "",
          f"{vit}, random weights, LoRA rank 4, batch 2, {result['vit']['canvas']} px canvas:", "",
          "| bf16 | activation checkpointing | step s | peak GPU GiB |", "|---|---|---|---|"]
    for r in rows:
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        md.append(f"| {r['bf16']} | {r['checkpointing']} | {r['step_s']:.3f} | {peak} |")
    li = result["lite"]
    md += ["", f"{vit} inference (bf16, batch 4): {result['vit']['inference_images_per_s_bf16']:.1f} images/s", "",
           f"{lite}: training {li['train_images_per_s']:.1f} images/s (batch 8, LoRA), inference "
           f"{li['inference_images_per_s']:.1f} images/s (batch 16)", "",
           f"End to end ({result['end_to_end']['data']}): finetune {iters} iterations "
           f"{ft_s:.1f} s, pseudolabel {len(recs)} cases {pl_s:.1f} s. Total {result['total_s']:.0f} s."]
    (out / "sam_gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "sam_gpu.md").write_text("\n".join(md) + "\n")
    if os.environ.get("OUT"):
        for f in ("sam_gpu.json", "sam_gpu.md"):
            dest = Path(os.environ["OUT"]) / f
            if dest.resolve() != (out / f).resolve():  # --out $OUT already wrote it there
                shutil.copy(out / f, dest)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
