"""LA at half resolution for the CPU budget protocol, and SAM pseudo-labels for it.

    python bench/la_half.py data   [--work /tmp/sfr_la_half]
    python bench/la_half.py pseudo --sam 1=MODEL_DIR 16=MODEL_DIR [--work ...] [--threads 1]

``data`` resamples the 80 LA volumes (0.625 mm isotropic, about 190 x 140 x 88 voxels) to 1.25 mm
with SimpleITK (images linear, labels linear on the mask then thresholded at 0.5), so that the
retrain benchmark's 32 x 64 x 64 crop covers the field of view of the paper's 80 x 112 x 112 crop
(64 x 128 x 128 full-resolution voxels, about 1.05 M vs 1.00 M) at an eighth of the cost.

``pseudo`` runs stage F's fine-tuned SAM models (``bench/sam_quality.py``: frozen LiteMedSAM encoder,
so both models share one encoder pass per window) on the *full-resolution* unlabeled cases, exactly
as ``sfr pseudolabel`` would, then resamples the foreground probability linearly onto the
half-resolution grid and thresholds it at 0.5.  The folder gets a ``pseudo-labels.json`` index
pointing at the half-resolution images (their sha256), so stage R's stale checks apply as usual.
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
import SimpleITK as sitk  # noqa: E402

LA = REPO.parent / "shared" / "data" / "la"
SPACING = 1.25


def half_grid(image: sitk.Image) -> sitk.Image:
    """An empty image on the 1.25 mm grid covering the same physical extent as ``image``."""
    old_sp = np.array(image.GetSpacing())
    old_size = np.array(image.GetSize())
    new_sp = np.full(3, SPACING)
    new_size = np.maximum(1, np.round(old_size * old_sp / new_sp)).astype(int)
    # keep the physical box: first voxel centre moves by half the spacing difference
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin()) + direction @ ((new_sp - old_sp) / 2.0)
    ref = sitk.Image([int(s) for s in new_size], sitk.sitkFloat32)
    ref.SetSpacing(tuple(float(s) for s in new_sp))
    ref.SetOrigin(tuple(float(o) for o in origin))
    ref.SetDirection(image.GetDirection())
    return ref


def resample_prob(prob: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """Linear resampling of a [0, 1] float image onto ``reference``; returns a [z, y, x] array."""
    out = sitk.Resample(sitk.Cast(prob, sitk.sitkFloat32), reference, sitk.Transform(), sitk.sitkLinear, 0.0)
    return sitk.GetArrayFromImage(out)


def binary_on(reference: sitk.Image, prob: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray((prob >= 0.5).astype(np.uint8))
    img.CopyInformation(reference)
    return img


def make_data(work: Path) -> Path:
    out = work / "data"
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    names = (LA / "train.list").read_text().split()
    for name in names:
        dst_i, dst_l = out / "images" / f"{name}.nii.gz", out / "labels" / f"{name}.nii.gz"
        if dst_i.exists() and dst_l.exists():
            continue
        img = sitk.ReadImage(str(LA / "images" / f"{name}.nii.gz"), sitk.sitkFloat32)
        lab = sitk.ReadImage(str(LA / "labels" / f"{name}.nii.gz"))
        ref = half_grid(img)
        half = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, 0.0)
        lab_half = binary_on(ref, resample_prob(sitk.Cast(lab > 0, sitk.sitkFloat32), ref))
        sitk.WriteImage(lab_half, str(dst_l) + ".part.nii.gz")
        sitk.WriteImage(half, str(dst_i) + ".part.nii.gz")
        Path(str(dst_l) + ".part.nii.gz").replace(dst_l)
        Path(str(dst_i) + ".part.nii.gz").replace(dst_i)
    (out / "train.list").write_text("\n".join(names) + "\n")
    return out


def pseudo_labels(specs: list, data: Path, threads: int = 1) -> None:
    """Stage F pseudo-labels on the half-resolution grid.

    ``specs``: dicts with ``model_dir``, ``out`` (folder), ``project`` (the project name stage R
    checks) and ``cases`` (names).  Models with a frozen encoder share one encoder pass per window;
    finished cases (in the folder's index) are skipped, so an interrupted call continues.
    """
    import torch

    from SFRSegmenterLib.io import read_image, sha256_file
    from SFRSegmenterLib.manifest import write_json_atomic
    from SFRSegmenterLib.pseudolabel import load_sam_model, predict_probabilities

    torch.set_num_threads(threads)
    index = []
    for spec in specs:
        spec["model"] = load_sam_model(spec["model_dir"], "cpu")
        out = Path(spec["out"])
        out.mkdir(parents=True, exist_ok=True)
        old = out / "pseudo-labels.json"
        idx = json.loads(old.read_text()) if old.exists() else {}
        idx.update(schema_version=1, model_id=spec["model"].meta["model_id"],
                   model_dir=str(Path(spec["model_dir"]).resolve()),
                   model_metadata_mtime=(Path(spec["model_dir"]) / "sam-model.json").stat().st_mtime,
                   project=spec["project"], made_by="bench/la_half.py (full-resolution SAM, probability "
                   "resampled to 1.25 mm)")
        idx.setdefault("cases", {})
        index.append(idx)
    order = list(dict.fromkeys(c for spec in specs for c in spec["cases"]))
    todo = [c for c in order if any(c in s["cases"] and c not in i["cases"] for s, i in zip(specs, index))]
    shared = all(int(s["model"].meta.get("lora_rank", 0)) == 0 for s in specs)
    t0 = time.monotonic()
    for k, name in enumerate(todo):
        image = read_image(LA / "images" / f"{name}.nii.gz")
        full = sitk.ReadImage(str(LA / "images" / f"{name}.nii.gz"), sitk.sitkFloat32)
        half_path = data / "images" / f"{name}.nii.gz"
        ref = sitk.ReadImage(str(half_path))
        cache: dict = {}
        for spec, idx in zip(specs, index):
            if name not in spec["cases"] or name in idx["cases"]:
                continue
            probs = predict_probabilities(spec["model"], image, overlap=0.0,
                                          encoder_cache=cache if shared else None, cache_key=name)
            fg = sitk.GetImageFromArray(probs[1].astype(np.float32))
            fg.CopyInformation(full)
            p = resample_prob(fg, ref)
            conf = np.maximum(p, 1.0 - p).astype(np.float32)
            conf_img = sitk.GetImageFromArray(conf)
            conf_img.CopyInformation(ref)
            out = Path(spec["out"])
            sitk.WriteImage(binary_on(ref, p), str(out / f"{name}.nii.gz"))
            sitk.WriteImage(conf_img, str(out / f"{name}_confidence.nii.gz"))
            idx["cases"][name] = {
                "image": str(half_path.resolve()), "image_sha256": sha256_file(half_path),
                "label": f"{name}.nii.gz", "confidence": f"{name}_confidence.nii.gz",
                "mean_confidence": round(float(conf.mean()), 6), "model_id": spec["model"].meta["model_id"],
            }
            write_json_atomic(out / "pseudo-labels.json", idx)
        print(f"[{time.strftime('%H:%M:%S')}] {k + 1}/{len(todo)} {name} ({time.monotonic() - t0:.0f} s)", flush=True)


def make_pseudo(work: Path, sam: dict, threads: int) -> dict:
    """Pseudo-labels of the benchmark's unlabeled cases (train.list[N:64]) for each N in ``sam``."""
    data = make_data(work)
    names = (LA / "train.list").read_text().split()[:64]
    specs = [{"model_dir": d, "out": work / f"pseudo_N{n}", "project": f"la_half_N{n}", "cases": names[n:]}
             for n, d in sam.items()]
    pseudo_labels(specs, data, threads)
    return {n: work / f"pseudo_N{n}" for n in sam}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["data", "pseudo"])
    ap.add_argument("--work", default="/tmp/sfr_la_half")
    ap.add_argument("--sam", nargs="*", default=[], metavar="N=MODEL_DIR")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    work = Path(args.work)
    if args.what == "data":
        print(make_data(work))
        return 0
    sam = {int(k): Path(v) for k, v in (s.split("=", 1) for s in args.sam)}
    if not sam:
        ap.error("pseudo needs --sam N=MODEL_DIR")
    for n, d in make_pseudo(work, sam, args.threads).items():
        print(f"N={n}: {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
