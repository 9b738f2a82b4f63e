"""sfr run: the whole pipeline (stitch, fine-tune SAM, pseudo-label, re-train; SFR+ rounds)."""

from __future__ import annotations

import argparse
import json

from .. import events, jobs
from ..errors import SFRError
from ..runfolder import RunFolder
from ..io import read_json, write_json_atomic
from ..manifest import load_project
from ..run.warmstart import LATEST as WARM_LATEST
from ..run.warmstart import WARM_FRACTION
from ._options import DEVICE_HELP, add_device

#: Options that define a run's configuration (refused together with --resume).
CONFIG_OPTIONS = ("budget", "sfr_plus", "rounds", "tau", "min_structure", "trust", "trust_fraction", "trust_floor", "round_retrain",
                  "largest_component", "processes", "backbone", "checkpoint", "ssl", "network", "iterations_sam",
                  "iterations_vnet", "batch_size_sam", "pseudo_overlap", "crop", "seed", "flag_k", "sam_option", "vnet_option")
#: The options among them that are parsed into a mapping (``KEY=VALUE`` items), not copied as they are.
PARSED_OPTIONS = {"sam_option": "sam_options", "vnet_option": "vnet_options"}
#: The options :func:`config_from_args` copies into the RunConfig field of the same name.
COPIED_OPTIONS = tuple(n for n in CONFIG_OPTIONS if n not in PARSED_OPTIONS)


def parse_options(items, flag: str) -> dict:
    """``["filters=8", "norm=\"instancenorm\""]`` -> ``{"filters": 8, "norm": "instancenorm"}``."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise SFRError(f"{flag} expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run the whole SFR / SFR+ pipeline on a project (resumable, can run in the background)",
        description="Stitch, fine-tune SAM on the labeled cases, pseudo-label the unlabeled ones, "
        "re-train a 3D V-Net semi-supervised, and with --sfr-plus alternate SAM fine-tuning on the "
        "trusted cases with re-training on the others. Writes PROJECT/runs/<run-id>/ (pseudo-labels, "
        "confidence maps, review.json, V-Net, metrics, report.html, log). Finished stages whose "
        "inputs did not change are reused. Exit status: 0 done, 2 bad input or error, "
        "3 cancelled (continue with --resume).",
    )
    from ..retrain.names import NETWORK_NAMES, SSL_NAMES
    from ..run.config import RunConfig as R
    from ..sam.registry import BACKBONE_NAMES
    from ._options import with_default

    # help texts name the defaults RunConfig gives; the options themselves default to None, so
    # --resume can tell an option that was given from one that was not
    p.add_argument("project", help="project folder (with sfr-project.json)")
    from ..run.budget import BUDGETS

    p.add_argument("--budget", choices=BUDGETS,
                   help="settings for the device and the data: paper (the paper's schedule), fast (the "
                   "CPU schedule of sfr demo: frozen-encoder LiteMedSAM, 300 + 400 iterations, slim "
                   "V-Net), auto (paper on a CUDA GPU with enough memory, fast elsewhere; the default); "
                   "--iterations-*, --backbone, --pseudo-overlap, --sam-option and --vnet-option win")
    method = p.add_argument_group("method (SFR / SFR+)")
    method.add_argument("--sfr-plus", action="store_true", default=None,
                        help="SFR+: confidence-selected rounds of SAM fine-tuning / re-training")
    method.add_argument("--rounds", type=int, metavar="K",
                        help="SFR+ rounds after the first SFR pass (default: 1 with --sfr-plus; 0 = plain SFR)")
    method.add_argument("--tau", type=float, help=with_default("case confidence threshold for trusted cases", R, "tau"))
    method.add_argument("--min-structure", type=float, metavar="F",
                        help=with_default("a case is trusted only if its predicted structure is at least F x the "
                                          "smallest labeled structure, by volume (0 = the paper's rule, confidence "
                                          "only)", R, "min_structure"))
    from ..sfrplus import RETRAIN_SCHEMES, TRUST_POLICIES

    method.add_argument("--trust", choices=sorted(TRUST_POLICIES), metavar="RULE",
                        help=with_default("who is trusted in an SFR+ round: 'estimate' (the best --trust-fraction of "
                                          "the cases by estimated Dice) or 'confidence' (the paper's: case "
                                          "confidence >= --tau, with --min-structure)", R, "trust"))
    method.add_argument("--trust-fraction", type=float, metavar="F",
                        help=with_default("fraction of the cases the 'estimate' rule trusts, 0..1", R, "trust_fraction"))
    method.add_argument("--trust-floor", type=float, metavar="D",
                        help=with_default("the 'estimate' rule trusts no case estimated below this Dice, 0..1", R,
                                          "trust_floor"))
    method.add_argument("--round-retrain", choices=RETRAIN_SCHEMES,
                        help=with_default("what the V-Net of an SFR+ round trains on: 'all' unlabeled cases (trusted "
                                          "ones with their V-Net labels) or the 'untrusted' only (the paper's)", R,
                                          "round_retrain"))
    method.add_argument("--largest-component", action=argparse.BooleanOptionalAction, default=None,
                        help=with_default("keep each class's largest connected component (for classes that are one "
                                          "structure)", R, "largest_component"))
    method.add_argument("--flag-k", type=int, metavar="K",
                        help=with_default("flagged slices per case in review.json", R, "flag_k"))
    method.add_argument("--seed", type=int, help=with_default("random seed of every stage", R, "seed"))
    sam = p.add_argument_group("stage F (SAM fine-tuning and pseudo-labels)")
    sam.add_argument("--backbone", choices=BACKBONE_NAMES, metavar="NAME",
                     help="SAM backbone: " + ", ".join(BACKBONE_NAMES) + " (default: stage F's)")
    sam.add_argument("--checkpoint", help="SAM checkpoint file (needed for vit_b/vit_l/vit_h/medsam)")
    sam.add_argument("--iterations-sam", type=int, metavar="N", help="SAM fine-tuning iterations (default: stage F's)")
    sam.add_argument("--batch-size-sam", type=int, metavar="N",
                     help="stage F training batch: volume crops per iteration (default: stage F's)")
    sam.add_argument("--pseudo-overlap", type=float, metavar="F",
                     help="overlap of SAM's sliding windows when pseudo-labeling, 0..0.9 (default: stage F's)")
    sam.add_argument("--sam-option", action="append", default=[], metavar="KEY=VALUE",
                     help="any other field of stage F's FinetuneConfig (repeatable; VALUE parsed as JSON)")
    vnet = p.add_argument_group("stage R (3D network re-training)")
    vnet.add_argument("--ssl", choices=SSL_NAMES, help="semi-supervised method (default: stage R's, mean_teacher)")
    vnet.add_argument("--network", choices=NETWORK_NAMES, help="3D network (default: stage R's, vnet)")
    vnet.add_argument("--iterations-vnet", type=int, metavar="N", help="re-training iterations (default: stage R's)")
    vnet.add_argument("--crop", type=int, nargs=3, metavar=("D", "H", "W"), help="training crop, array order")
    vnet.add_argument("--vnet-option", action="append", default=[], metavar="KEY=VALUE",
                      help="any other field of stage R's RetrainConfig, e.g. filters=8 (repeatable)")
    job = p.add_argument_group("the run")
    job.add_argument("--warm-start", nargs="?", const=WARM_LATEST, metavar="RUN",
                     help="start stage F and stage R from the models of the finished run RUN (a run id or "
                     f"folder of this project; default: the latest finished run) with a short schedule "
                     f"({int(WARM_FRACTION * 100)} %% of the iterations each stage ran in RUN, unless given); recorded as "
                     "warm_start_from in config.json")
    add_device(job, default=None, help=DEVICE_HELP + " (default auto)")  # None: --resume keeps the saved one
    job.add_argument("--processes", metavar="N",
                     help="run stage R (data-parallel), the pseudo-labels and the confidence stage (cases split) on N "
                     "processes (or auto) under "
                     "torchrun: one per GPU, or gloo on the CPU; auto (the default): one per CUDA device when "
                     "there are several, else 1; saved in config.json as the number")
    job.add_argument("--no-report", action="store_true", help="do not write report.html at the end")
    job.add_argument("--detach", action="store_true",
                     help="start the run in the background, print its id and return at once")
    job.add_argument("--resume", action="store_true",
                     help="continue the latest run (cancelled, failed, crashed or killed) with its saved "
                     "configuration, without redoing finished steps")
    p.add_argument("--attach", metavar="RUN_ID", help=argparse.SUPPRESS)  # the detached child
    p.set_defaults(func=run)


def config_from_args(args):
    """The run configuration the parsed options give (checked; the device is not probed)."""
    from ..run.config import RunConfig

    cfg = RunConfig()
    for name in COPIED_OPTIONS:
        value = getattr(args, name, None)
        if value is not None:
            setattr(cfg, name, list(value) if name == "crop" else value)
    for name, field in PARSED_OPTIONS.items():
        setattr(cfg, field, parse_options(getattr(args, name), "--" + name.replace("_", "-")))
    cfg.sfr_plus = bool(args.sfr_plus)
    if args.device:
        cfg.device = args.device
    if args.no_report:
        cfg.report = False
    if getattr(args, "warm_start", None) is not None and not str(args.warm_start).strip():
        # an empty RUN (an unset "$RUN" in a script) is not a request for a full run
        raise SFRError("--warm-start got an empty run id: give a run id, or --warm-start alone for the latest finished run")
    if getattr(args, "warm_start", None):
        cfg.warm_start_from = args.warm_start  # a run id once `sfr run` resolved it (..run.warmstart)
    from ..run.distributed import parse_processes

    cfg.processes = parse_processes(cfg.processes)
    if cfg.rounds is not None and cfg.rounds < 0:
        raise SFRError(f"--rounds must be >= 0, got {cfg.rounds}")
    if cfg.rounds and not cfg.sfr_plus:
        cfg.sfr_plus = True  # --rounds K asks for SFR+
    if not 0 < cfg.tau <= 1:
        raise SFRError(f"--tau must be in (0, 1], got {cfg.tau}")
    if cfg.min_structure < 0:
        raise SFRError(f"--min-structure must be >= 0, got {cfg.min_structure}")
    from ..sfrplus import check_trust

    check_trust(cfg.trust, cfg.trust_fraction, cfg.trust_floor)
    for name in ("iterations_sam", "iterations_vnet", "batch_size_sam"):
        v = getattr(cfg, name)
        if v is not None and v < 1:
            raise SFRError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    return cfg


def _config_from_args(args, project):
    cfg = config_from_args(args)
    from ..device import resolve_device
    from ..run.budget import resolve

    device = resolve_device(cfg.device)  # an unavailable device is refused before anything starts
    resolve(cfg, project, device)  # the budget's settings, chosen once, saved in config.json
    from ..run.distributed import resolve_processes

    cfg.processes, _ = resolve_processes(cfg.processes, device)  # saved as the number
    return cfg


#: How ``sfr run`` fetches the official SAM ViT-B file (stage F's ``download`` field).
DOWNLOAD_HINT = "run again with --sam-option download=true on a machine with internet"


def check_checkpoint(cfg) -> None:
    """Stage F's base weights are there (or may be downloaded) before a run folder exists: a
    missing ViT checkpoint is one line now, not a failure after stitching."""
    from ..run.config import finetune_config
    from ..sam.checkpoints import locate_checkpoint

    stage = finetune_config(cfg)
    locate_checkpoint(stage.backbone, stage.checkpoint, can_download=stage.download, download_hint=DOWNLOAD_HINT)


def run(args) -> int:
    from ..run import config, job

    project = load_project(args.project)
    root = project.root
    if args.attach:  # we are the detached child: the run folder exists, the lock is handed to us
        return job.execute(root, jobs.run_dir(root, args.attach))
    jobs.ProjectLock(root, "?").check_free()  # a busy project is refused at once (taken below)
    if args.resume:
        given = [n for n in (*CONFIG_OPTIONS, "warm_start") if getattr(args, n, None) not in (None, False, [])]
        if given:
            raise SFRError(
                "--resume continues the latest run with its saved configuration; drop "
                + ", ".join("--" + n.replace("_", "-") for n in given)
                + " or start a new run (finished stages are reused anyway)"
            )
        path = jobs.run_dir(root)
        run_id, cfg = path.name, None
    else:
        cfg = _config_from_args(args, project)
        if cfg.warm_start_from:  # the run exists, finished, of this project, same classes
            from ..run import warmstart

            warm = warmstart.resolve(project, cfg.warm_start_from)
            cfg.warm_start_from = warm.run_id
            warmstart.short_schedule(cfg, warm.run_path)  # a fifth of what that run's stages ran
            warmstart.inherit_settings(cfg, warm.run_path)  # its models' settings, unless given
        config.validate_config(cfg)
        from ..preflight import check_run
        from ..run.budget import effective

        settings = effective(cfg)
        if cfg.warm_start_from:
            warmstart.check_compatible(warm, settings)
        check_run(project, settings)  # everything the run needs, before the first stage
        check_checkpoint(settings)
        run_id, path = jobs.new_run_id(), None
    # the lock first: only its holder creates a run folder or moves runs/latest, so of two starts
    # (a double click) the refused one leaves nothing behind
    lock = jobs.ProjectLock(root, run_id).acquire()
    try:
        if args.resume:
            status = jobs.read_status(path)
            if status.get("state") == "done":
                print(f"run {path.name} is already complete: {path}")
                return 0
            RunFolder(path).cancel_request.unlink(missing_ok=True)
            if args.device:
                data = read_json(RunFolder(path).config, "run configuration")
                data["device"] = args.device
                write_json_atomic(RunFolder(path).config, data)
            events.log(f"resuming run {path.name} (was {status.get('state')})")
        else:
            path = job.create_run(project, cfg, run_id)
        if args.detach:
            return _detach(root, path, lock)
        code = job.execute(root, path)
    finally:
        lock.release()  # no-op once the run (or the detached child) took the lock over
    if code == 0 and events.mode() != "json":
        report = RunFolder(path).report
        print(f"run {path.name} finished: {path}" + (f"\nreport: {report}" if report.exists() else ""))
    elif code == jobs.EXIT_CANCELLED and events.mode() != "json":
        print(f"run {path.name} cancelled; continue with: sfr run {root} --resume")
    return code


def _detach(root, path, lock) -> int:
    """Start the run in a background child, wait until it holds the project lock, print its id."""
    import time

    child = jobs.spawn_detached(["--progress", "none", "run", str(root), "--attach", path.name],
                                RunFolder(path).log)
    # the child writes status.json from now on; the launcher record lets `sfr status` tell a
    # child that died before writing anything
    write_json_atomic(RunFolder(path).launcher, {"pid": child.pid, "host": __import__("socket").gethostname(),
                                               "proc_start": jobs._proc_start(child.pid),
                                               "time": jobs.utcnow()})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        if (jobs.ProjectLock.read(lock.path) or {}).get("pid") == child.pid:
            break  # handed over: this process may exit
        time.sleep(0.05)
    events.emit("result", run_id=path.name, pid=child.pid, run=str(path), detached=True)
    if events.mode() != "json":
        print(path.name)
    return 0
