"""sfr demo: the whole pipeline on the bundled hippocampus sample, on the CPU, with a report."""

from __future__ import annotations

from pathlib import Path

from .. import events, jobs
from ..errors import SFRError
from ..runfolder import RunFolder
from ._options import DEVICE_HELP, add_device

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "hippocampus"

#: The demo: the ``fast`` budget (run/budget.py FAST: LiteMedSAM with a frozen encoder on cached
#: embeddings, 300 + 400 iterations, slim V-Net) on the CPU, 2 labeled cases, one SFR+ round.
DEMO_SETTINGS = {"budget": "fast", "device": "cpu", "rounds": 1, "labeled": 2}


def _fast(name: str):
    from ..run.budget import FAST

    return FAST[name]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run SFR+ on the bundled 12-case hippocampus sample (2 labeled) on the CPU and write a report",
        description="Creates a project from the bundled sample (Medical Segmentation Decathlon Task04 "
        "hippocampus MRI, CC-BY-SA 4.0; Simpson et al. 2019, Antonelli et al. 2022): 2 labeled cases, "
        "10 unlabeled whose labels are kept as hidden ground truth for the metrics. Runs LiteMedSAM "
        "fine-tuning, pseudo-labeling, V-Net re-training and one SFR+ round on the CPU (about 10 "
        "minutes on 2 cores), then prints where the HTML report is. Running it again in the same "
        "folder reuses the finished stages.",
    )
    p.add_argument("--out", default="sfr-demo", help="folder for the demo project (default ./sfr-demo)")
    p.add_argument("--iterations-sam", type=int, help=f"default {_fast('iterations_sam')} (the fast budget's)")
    p.add_argument("--iterations-vnet", type=int, help=f"default {_fast('iterations_vnet')} (the fast budget's)")
    p.add_argument("--rounds", type=int, help=f"SFR+ rounds (default {DEMO_SETTINGS['rounds']})")
    p.add_argument("--backbone", help=f"default {_fast('backbone')} (tiny_test: seconds, meaningless)")
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
        if not (out / "ATTRIBUTION.md").exists():  # what every demo project holds from its start
            raise SFRError("this is an SFR project that 'sfr demo' did not make; choose another --out, "
                           "or use 'sfr run' on it", out)
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
        project = init_project(out, SAMPLE / "images", SAMPLE / "labels", labeled=labeled, cases=cases)
        import shutil

        shutil.copy2(SAMPLE / "ATTRIBUTION.md", out / "ATTRIBUTION.md")  # also marks the folder as the demo's
        return project
    finally:
        if cases:
            Path(cases).unlink(missing_ok=True)


#: --quick: the paper budget's stage options (LoRA on the tiny random SAM) with a few iterations
QUICK_SETTINGS = {"budget": "paper", "backbone": "tiny_test", "iterations_sam": 3, "iterations_vnet": 3,
                  "rounds": 1, "pseudo_overlap": 0.0, "vnet_options": {"filters": 4}}


def demo_config(args):
    """The demo's RunConfig: its budget (resolved later, as for ``sfr run``), the options given."""
    from ..run.config import RunConfig

    s = dict(DEMO_SETTINGS)
    if getattr(args, "quick", False):
        s.update(QUICK_SETTINGS)
    for k in ("iterations_sam", "iterations_vnet", "rounds", "backbone", "device"):
        v = getattr(args, k, None)
        if v is not None:
            s[k] = v
    cfg = RunConfig(sfr_plus=True, budget=s["budget"], rounds=s["rounds"], device=s["device"],
                    backbone=s.get("backbone"), iterations_sam=s.get("iterations_sam"),
                    iterations_vnet=s.get("iterations_vnet"), pseudo_overlap=s.get("pseudo_overlap"),
                    vnet_options=dict(s.get("vnet_options", {})))
    if getattr(args, "seed", None) is not None:
        cfg.seed = int(args.seed)
    return cfg


def run(args) -> int:
    from ..run import config, job

    out = Path(args.out).resolve()
    cfg = demo_config(args)
    if cfg.backbone:  # what can be checked without the project, before it is written
        from ..sam.registry import get_spec

        get_spec(cfg.backbone)
    project = make_demo_project(out, DEMO_SETTINGS["labeled"], 2 if args.quick else None)
    n_unl = len(project.by_role("unlabeled"))
    if not n_unl:
        raise SFRError("this demo project has no unlabeled case left to pseudo-label; choose another --out", out)
    if events.mode() != "json":
        print(f"demo project: {out} ({len(project.by_role('labeled'))} labeled, {n_unl} unlabeled hippocampus MRI)\n"
              "data: Medical Segmentation Decathlon Task04 (Simpson et al. 2019, arXiv:1902.09063), "
              "CC-BY-SA 4.0; see ATTRIBUTION.md", flush=True)
    jobs.ProjectLock(project.root, "?").check_free()
    from ..device import resolve_device
    from ..run.budget import resolve

    resolve(cfg, project, resolve_device(cfg.device))  # the same budget code as sfr run
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
