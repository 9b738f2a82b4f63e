"""V-Net on a GPU: training-step time and sliding-window inference time at LA size.

    python bench/gpu/vnet_gpu.py            # on a GPU, < 4 min on an H100, no network, random data
    python bench/gpu/vnet_gpu.py --smoke    # tiny sizes on CPU, to check the script

Measures, with random data of LA size (volume 88 x 144 x 240, crop 80 x 112 x 112, array order):
1. raw training step (forward + backward + SGD) of the paper's V-Net, batch 2 labeled + 2
   unlabeled, Mean Teacher + SAM pseudo-label loss (teacher forward and EMA included), fp32
   and bf16 autocast;
2. the real training loop ``retrain()`` (data pipeline, crops, augmentation, checkpoint) on a
   synthetic project of random volumes, seconds per iteration;
3. inference seconds per volume at the paper's stride (4, 18, 18) (= (18, 18, 4) in x, y, z),
   windows batched 8 at a time, and peak GPU memory.
Writes bench/results/vnet_gpu.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from SFRSegmenterLib.device import describe_device, resolve_device  # noqa: E402
from SFRSegmenterLib.io import Volume, write_volume  # noqa: E402
from SFRSegmenterLib.manifest import Case, Project, write_json_atomic  # noqa: E402
from SFRSegmenterLib.retrain import RetrainConfig, predict_volume, retrain  # noqa: E402
from SFRSegmenterLib.retrain.data import PSEUDO_INDEX, sha256_file  # noqa: E402
from SFRSegmenterLib.retrain.networks import build_network, count_parameters  # noqa: E402
from SFRSegmenterLib.retrain.ssl import MeanTeacher, StepContext, seg_loss  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def raw_steps(device, crop, steps, amp: bool) -> dict:
    torch.manual_seed(0)
    cfg = RetrainConfig()
    model = build_network("vnet", 1, 2).to(device).train()
    mt = MeanTeacher(cfg)
    mt.setup(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(4, 1, *crop, device=device)
    y = torch.randint(0, 2, (4, *crop), device=device)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for it in range(steps + 2):
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
            loss = seg_loss(logits[:2], y[:2]) + seg_loss(logits[2:], y[2:])
            ctx = StepContext(it, 6000, x[2:], logits[2:], [it * 2, it * 2 + 1])
            unsup, _ = mt.unsupervised_loss(ctx)
            loss = loss + unsup
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        opt.step()
        mt.after_step(model, it)
        sync(device)
        if it >= 2:  # warm-up excluded
            times.append(time.perf_counter() - t0)
    out = {"s_per_step": float(np.median(times)), "steps": len(times), "amp_bf16": amp}
    if device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def loop(device, shape, crop, iterations) -> dict:
    """The real ``retrain()`` on a synthetic project of random volumes (with pseudo-labels)."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synthetic"
        cases, entries = [], {}
        for i in range(8):
            img = Volume(rng.normal(size=shape).astype(np.float32), (0.625,) * 3)
            lab = img.with_array((rng.random(shape) < 0.1).astype(np.uint8))
            ip, lp = root / "images" / f"c{i}.nii.gz", root / "labels" / f"c{i}.nii.gz"
            write_volume(img, ip, compress=False)
            write_volume(lab, lp, compress=False)
            role = "labeled" if i < 4 else "unlabeled"
            cases.append(Case(f"c{i}", f"images/c{i}.nii.gz", f"labels/c{i}.nii.gz", role))
            if role == "unlabeled":
                write_volume(lab, root / "pseudo" / f"c{i}.nii.gz", compress=False)
                entries[f"c{i}"] = {"image": str(ip), "image_sha256": sha256_file(ip), "label": f"c{i}.nii.gz",
                                    "confidence": f"c{i}.nii.gz"}
        project = Project(root, cases, ["background", "fg"], name="synthetic")
        project.save()
        write_json_atomic(root / "pseudo" / PSEUDO_INDEX, {"model_id": "none", "model_metadata_mtime": 0.0,
                                                          "project": "synthetic", "cases": entries})
        cfg = RetrainConfig(iterations=iterations, crop=crop, device=str(device.type), save_every=0)
        t0 = time.perf_counter()
        out = retrain(project, cfg, out_dir=root / "model", pseudo_dir=root / "pseudo")
        total = time.perf_counter() - t0
        meta = json.loads((out / "meta.json").read_text())
    return {"iterations": iterations, "loop_seconds": meta["seconds"], "s_per_iteration": meta["seconds"] / iterations,
            "total_seconds_with_loading": round(total, 2)}


def inference(device, shape, window, stride, batch, repeats) -> dict:
    torch.manual_seed(0)
    model = build_network("vnet", 1, 2).to(device).eval()
    model.sfr_meta = {"window": list(window)}
    vol = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    predict_volume(model, vol, window, stride, batch)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        predict_volume(model, vol, window, stride, batch)
        sync(device)
        times.append(time.perf_counter() - t0)
    from SFRSegmenterLib.retrain.inference import window_starts

    n = np.prod([len(window_starts(s, w, st)) for s, w, st in zip(shape, window, stride)])
    out = {"s_per_volume": float(np.median(times)), "windows": int(n), "batch": batch, "volume": list(shape),
           "window": list(window), "stride": list(stride)}
    if device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on CPU")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args(argv)
    if args.smoke:
        device = torch.device("cpu")
        torch.set_num_threads(1)
        shape, crop, stride, steps, iters, reps, name = (20, 40, 56), (16, 32, 32), (4, 8, 8), 1, 2, 1, "vnet_gpu_smoke"
    else:
        device = resolve_device(args.device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        shape, crop, stride, steps, iters, reps, name = (88, 144, 240), (80, 112, 112), (4, 18, 18), 20, 60, 3, "vnet_gpu"
    res = {"device": describe_device(device), "torch": torch.__version__,
           "parameters": count_parameters(build_network("vnet", 1, 2)), "crop": list(crop)}
    t_all = time.perf_counter()
    res["step_fp32"] = raw_steps(device, crop, steps, amp=False)
    print("step fp32", res["step_fp32"], flush=True)
    if device.type == "cuda":
        res["step_bf16"] = raw_steps(device, crop, steps, amp=True)
        print("step bf16", res["step_bf16"], flush=True)
    res["retrain_loop"] = loop(device, shape, crop, iters)
    print("loop", res["retrain_loop"], flush=True)
    res["inference"] = inference(device, shape, crop, stride, 8, reps)
    print("inference", res["inference"], flush=True)
    res["total_seconds"] = round(time.perf_counter() - t_all, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    md = [f"# V-Net on {res['device']}", "",
          f"V-Net {res['parameters']:,} parameters, crop {crop}, batch 2 labeled + 2 unlabeled, MT + SAM loss.", "",
          "| measurement | value |", "|---|---|",
          f"| raw training step fp32 (s) | {res['step_fp32']['s_per_step']:.4f} |"]
    if "step_bf16" in res:
        md.append(f"| raw training step bf16 autocast (s) | {res['step_bf16']['s_per_step']:.4f} |")
    if "peak_gib" in res["step_fp32"]:
        md.append(f"| training peak memory fp32 (GiB) | {res['step_fp32']['peak_gib']} |")
    md += [f"| retrain() loop, s/iteration ({iters} it.) | {res['retrain_loop']['s_per_iteration']:.4f} |",
           f"| 6000 iterations, extrapolated (min) | {res['retrain_loop']['s_per_iteration'] * 6000 / 60:.1f} |",
           f"| inference s/volume {list(shape)} stride {list(stride)} ({res['inference']['windows']} windows, batch 8) | "
           f"{res['inference']['s_per_volume']:.3f} |", f"| script total (s) | {res['total_seconds']} |", ""]
    (out / f"{name}.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
