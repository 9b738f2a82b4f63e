"""Warm start: a run whose stage F and stage R start from a finished run's models.

``sfr run PROJECT --warm-start [RUN]`` (RUN: a run id or folder of this project; default the
latest finished run).  The new run records ``warm_start_from`` (the run id) in its
``config.json``; its fine-tuning and re-training start from that run's final SAM model
(``stages/finetune-r<final round>``) and V-Net (``vnet/``) with a short schedule of their own:
:data:`WARM_FRACTION` of the iterations each stage ran in that run, unless given on the command
line (:func:`short_schedule`; the new run's ``config.json`` records the numbers); with a frozen
encoder, also that share of the source's cached training mosaics (``embedding_cache``), and the
pseudo-labels decode the window embeddings the source run stored (:mod:`..encoder_store`).

Settings the command line does not give are the source run's (:func:`inherit_settings`: the
backbone, the V-Net's architecture, ...), so that ``--warm-start`` alone continues the same models.

Refused, before anything is written (one line, exit 2): a run of another project, a run that
did not finish, a run whose models have other classes than the project.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import jobs
from ..errors import SFRError
from ..io import read_json
from ..project_folders import SAM_MODEL_META
from .config import CONFIG_JSON

#: The share of the source run's iterations a warm-started stage runs (its measurement:
#: bench/results/clinician_warm.md).
WARM_FRACTION = 0.2
#: ``sfr run --warm-start`` without a run: the latest finished run.
LATEST = "latest"


@dataclass(frozen=True)
class WarmStart:
    run_id: str
    sam_dir: Path  # the run's final fine-tuned SAM model
    vnet_dir: Path  # the run's published V-Net
    run_path: Path  # the run's folder

    def key(self) -> list:
        """What a warm-started stage's cache key depends on: the models' contents."""
        from ..io import sha256_file

        sam = read_json(self.sam_dir / SAM_MODEL_META, "SAM model metadata")
        return [self.run_id, sam.get("model_id"), sha256_file(self.vnet_dir / "model.pt")]


def warm_iterations(iterations: int) -> int:
    return max(1, int(round(int(iterations) * WARM_FRACTION)))


def short_schedule(cfg, source_run: Path) -> None:
    """Set ``cfg``'s iterations to :data:`WARM_FRACTION` of what ``source_run``'s stages ran, for
    each stage whose iterations the command line did not give; the same for stage F's cached
    mosaics (frozen encoder) unless ``--sam-option embedding_cache`` was given."""
    from .budget import effective
    from .config import finetune_config, load_run_config, retrain_config

    source = effective(load_run_config(source_run))  # what its stages ran, the budget's settings included
    ft = finetune_config(source)
    if cfg.iterations_sam is None and "iterations" not in cfg.sam_options:
        cfg.iterations_sam = warm_iterations(ft.iterations)
    if ft.embedding_cache and "embedding_cache" not in cfg.sam_options:
        # the fifth of the iterations trains on a fifth of the cached mosaics: the encoder passes of
        # the training cache are most of a short stage F on a CPU
        cfg.sam_options = {**cfg.sam_options, "embedding_cache": warm_iterations(ft.embedding_cache)}
    if cfg.iterations_vnet is None and "iterations" not in cfg.vnet_options:
        cfg.iterations_vnet = warm_iterations(retrain_config(source).iterations)


#: The settings a warm start takes from its source run unless the command line gives them: what
#: shapes the models it continues (and how it sees the data).
INHERITED = ("backbone", "checkpoint", "ssl", "network", "crop", "pseudo_overlap", "batch_size_sam")


def inherit_settings(cfg, source_run: Path) -> None:
    """Give ``cfg`` the source run's effective model settings (:data:`INHERITED`, and every
    ``--sam-option``/``--vnet-option`` key but the iterations) that the command line did not give:
    ``sfr run --warm-start`` alone continues the same models (``config.json`` records them)."""
    from .budget import effective
    from .config import load_run_config

    source = effective(load_run_config(source_run))
    for name in INHERITED:
        if getattr(cfg, name) is None:
            setattr(cfg, name, getattr(source, name))
    for name in ("sam_options", "vnet_options"):
        theirs = {k: v for k, v in getattr(source, name).items() if k != "iterations"}
        setattr(cfg, name, {**theirs, **getattr(cfg, name)})


#: What a V-Net's weights depend on (dropout has none): a warm start needs the same.
VNET_SHAPE = ("filters", "norm", "residual")


def check_compatible(warm: "WarmStart", cfg) -> None:
    """Refuse, before the first stage, settings whose models cannot start from the source's: another
    backbone or LoRA rank for stage F, another network or V-Net shape for stage R."""
    from .config import finetune_config, retrain_config

    sam = read_json(warm.sam_dir / SAM_MODEL_META, "SAM model metadata")
    ft = finetune_config(cfg)
    for what, theirs, mine, option in (("backbone", sam.get("backbone"), ft.backbone, "--backbone"),
                                       ("LoRA rank", sam.get("lora_rank"), ft.lora_rank, "--sam-option lora_rank")):
        if theirs is not None and theirs != mine:
            raise SFRError(f"--warm-start: run {warm.run_id}'s SAM model has {what} {theirs}, this run {mine}: "
                           f"drop {option} or start without --warm-start", warm.sam_dir / SAM_MODEL_META)
    vnet = read_json(warm.vnet_dir / "meta.json", "V-Net metadata", missing={})
    rt = retrain_config(cfg)
    theirs = {k: (vnet.get("options") or {}).get(k) for k in VNET_SHAPE}
    mine = {k: rt.network_options()[k] for k in VNET_SHAPE}
    if vnet.get("network") not in (None, rt.network) or any(theirs[k] is not None and theirs[k] != mine[k] for k in VNET_SHAPE):
        raise SFRError(f"--warm-start: run {warm.run_id}'s V-Net is {vnet.get('network')} {theirs}, this run "
                       f"{rt.network} {mine}: drop the --vnet-option or start without --warm-start", warm.vnet_dir)


def latest_finished(project_root: Path) -> str:
    runs = jobs.runs_dir(project_root)
    ids = sorted((p.name for p in runs.glob("*") if (p / CONFIG_JSON).is_file()), reverse=True) if runs.is_dir() else []
    for rid in ids:
        if jobs.read_status(runs / rid).get("state") == "done":
            return rid
    raise SFRError("--warm-start: no finished run in this project to start from (run 'sfr run' first)", runs)


def _run_folder(project_root: Path, run: str, case_names=()) -> Path:
    """The folder of ``run`` in this project's ``runs/``; a run recorded for a project elsewhere is
    accepted when it is this project moved or renamed (every case it reviewed is the project's)."""
    from ..runfolder import RunFolder

    runs = jobs.runs_dir(project_root)
    given = Path(run)
    path = given if (given.is_absolute() or len(given.parts) > 1) else runs / run
    if not path.is_dir() or not (path / CONFIG_JSON).is_file():
        raise SFRError(f"--warm-start: no run {run!r} (expected a run id under {runs} or a run folder)", path)
    config = read_json(path / CONFIG_JSON, "run configuration")
    recorded = config.get("project") if isinstance(config, dict) else None
    moved = isinstance(recorded, str) and bool(recorded) and Path(recorded).resolve() != Path(project_root).resolve()
    if path.resolve().parent != runs.resolve() or (moved and RunFolder(path).cases_not_in(case_names)):
        raise SFRError(f"--warm-start: run {path.name} belongs to another project ({recorded or path.parent.parent}), "
                       f"not {Path(project_root).resolve()}", path)
    return path


def resolve(project, run: "str | None") -> WarmStart:
    """The models of the finished run ``run`` (``None`` or :data:`LATEST`: the latest finished run)."""
    root = Path(project.root)
    path = _run_folder(root, latest_finished(root) if run in (None, LATEST) else run, [c.name for c in project.cases])
    state = jobs.read_status(path).get("state")
    if state != "done":
        raise SFRError(f"--warm-start: run {path.name} is not finished (state {state}); resume it or name another", path)
    rounds = read_json(path / "rounds.json", "run's rounds", missing={})
    sam_dir = path / "stages" / f"finetune-r{int(rounds.get('final_round', 0))}"
    vnet_dir = path / "vnet"
    sam = read_json(sam_dir / SAM_MODEL_META, "SAM model metadata", missing=None)
    if sam is None or not (vnet_dir / "model.pt").is_file():
        raise SFRError(f"--warm-start: run {path.name} has no final SAM model or V-Net", path)
    vnet = read_json(vnet_dir / "meta.json", "V-Net metadata", missing={})
    for what, classes in (("SAM model", sam.get("classes")), ("V-Net", vnet.get("classes"))):
        if classes is not None and list(classes) != list(project.classes):
            raise SFRError(f"--warm-start: the {what} of run {path.name} has classes {', '.join(map(str, classes))}, "
                           f"the project {', '.join(project.classes)}", path)
    return WarmStart(path.name, sam_dir, vnet_dir, path)
