"""sfr demo: the whole pipeline on the bundled hippocampus sample, on the CPU, with a report."""

from __future__ import annotations

from pathlib import Path

from .. import events, jobs
from ..errors import SFRError
from ..runfolder import RunFolder
from ._options import DEVICE_HELP, add_device

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "hippocampus"

#: The demo's budget: LiteMedSAM + V-Net on 12 small volumes, 2 CPU cores, under 10 minutes.
DEMO_SETTINGS = {
    "backbone": "lite_medsam",
    "device": "cpu",
    "iterations_sam": 300,
    "iterations_vnet": 400,
    "rounds": 1,
    "labeled": 2,
    # CPU: frozen encoder, decoder trained on cached embeddings of 64 augmented mosaics (stage
    # F's CPU mode, ~20x cheaper per iteration than LoRA); no window overlap when pseudo-labeling
    # a linear learning-rate warm-up over the first 50 of the 300 steps: without it seed 1 ended at
    # Dice 54 / 60 (SAM 37 / 44); with it 72 / 72 (seed 1337: 73 / 69) (bench/results/demo_quality.md)
    "sam_options": {"lora_rank": 0, "embedding_cache": 64, "warmup": 50},
    "pseudo_overlap": 0.0,
    # a slim V-Net (8 base filters instead of 16: ~4x fewer operations) for the CPU budget, without
    # dropout (dropping half of 8 channels before the output layer kept it from ever telling the
    # two hippocampus structures apart); measurements in bench/results/demo_quality.md
    "vnet_options": {"filters": 8, "dropout": 0.0},
}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run SFR+ on the bundled 12-case hippocampus sample (2 labeled) on the CPU and write a report",
        description="Creates a project from the bundled sample (Medical Segmentation Decathlon Task04 "
        "hippocampus MRI, CC-BY-SA 4.0; Simpson et al. 2019, Antonelli et al. 2022): 2 labeled cases, "
        "10 unlabeled whose labels are kept as hidden ground truth for the metrics. Runs LiteMedSAM "
        "fine-tuning, pseudo-labeling, V-Net re-training and one SFR+ round on the CPU (under 10 "
        "minutes on 2 cores), then prints where the HTML report is. Running it again in the same "
        "folder reuses the finished stages.",
    )
    p.add_argument("--out", default="sfr-demo", help="folder for the demo project (default ./sfr-demo)")
    p.add_argument("--iterations-sam", type=int, help=f"default {DEMO_SETTINGS['iterations_sam']}")
    p.add_argument("--iterations-vnet", type=int, help=f"default {DEMO_SETTINGS['iterations_vnet']}")
    p.add_argument("--rounds", type=int, help=f"SFR+ rounds (default {DEMO_SETTINGS['rounds']})")
    p.add_argument("--backbone", help=f"default {DEMO_SETTINGS['backbone']} (tiny_test: seconds, meaningless)")
    add_device(p, default=None, help=DEVICE_HELP + " (default cpu)")
    p.add_argument("--seed", type=int, help="random seed of every stage (default 1337)")
    p.add_argument("--quick", action="store_true",
                   help="CI-sized smoke run: tiny random SAM, a few iterations, 2 unlabeled cases "
                   "(meaningless numbers; checks an installation in about a minute)")
    p.set_defaults(func=run)


def make_demo_project(out: Path, labeled: int = 2, unlabeled: int | None = None):
    import tempfile

    from ..manifest import MANIFEST_NAME, init_project, load_project

    if (out / MANIFEST_NAME).exists():
        return load_project(out)
    if out.exists() and any(out.iterdir()):
        raise SFRError("folder exists and is not an SFR project; choose another --out", out)
    cases = None
    if unlabeled is not None:
        names = sorted(p.name[: -len(".nii.gz")] for p in (SAMPLE / "images").glob("*.nii.gz"))
        fd, cases = tempfile.mkstemp(suffix=".txt")
        with open(fd, "w") as fh:
            fh.write("\n".join(names[: labeled + unlabeled]) + "\n")
    try:
        return init_project(out, SAMPLE / "images", SAMPLE / "labels", labeled=labeled, cases=cases)
    finally:
        if cases:
            Path(cases).unlink(missing_ok=True)


QUICK_SETTINGS = {"backbone": "tiny_test", "iterations_sam": 3, "iterations_vnet": 3, "rounds": 1}


def demo_config(args):
    from ..run.config import RunConfig

    s = dict(DEMO_SETTINGS)
    if getattr(args, "quick", False):
        s.update(QUICK_SETTINGS)
    for k in ("iterations_sam", "iterations_vnet", "rounds", "backbone", "device"):
        v = getattr(args, k, None)
        if v is not None:
            s[k] = v
    cfg = RunConfig(sfr_plus=True, rounds=s["rounds"], backbone=s["backbone"], device=s["device"],
                    iterations_sam=s["iterations_sam"], iterations_vnet=s["iterations_vnet"],
                    sam_options=dict(s["sam_options"]), pseudo_overlap=s["pseudo_overlap"],
                    vnet_options=dict(s["vnet_options"]))
    if getattr(args, "seed", None) is not None:
        cfg.seed = int(args.seed)
    if getattr(args, "quick", False):
        cfg.vnet_options = {"filters": 4}
        cfg.sam_options = {}
    return cfg


def run(args) -> int:
    from ..run import config, job

    out = Path(args.out).resolve()
    project = make_demo_project(out, DEMO_SETTINGS["labeled"], 2 if args.quick else None)
    n_unl = len(project.by_role("unlabeled"))
    import shutil

    if not (out / "ATTRIBUTION.md").exists():
        shutil.copy2(SAMPLE / "ATTRIBUTION.md", out / "ATTRIBUTION.md")
    if events.mode() != "json":
        print(f"demo project: {out} (2 labeled, {n_unl} unlabeled hippocampus MRI)\n"
              "data: Medical Segmentation Decathlon Task04 (Simpson et al. 2019, arXiv:1902.09063), "
              "CC-BY-SA 4.0; see ATTRIBUTION.md", flush=True)
    jobs.ProjectLock(project.root, "?").check_free()
    cfg = demo_config(args)
    config.validate_config(cfg)
    path = job.create_run(project, cfg)
    code = job.execute(project.root, path)
    if code != 0:
        return code
    report = RunFolder(path).report
    if events.mode() != "json":
        st = jobs.read_status(path)
        print(f"demo finished in {float(st.get('seconds') or 0) / 60:.1f} min: {path}")
        print(f"report: {report}")
    return 0
