"""``sfr run``: the whole SFR / SFR+ pipeline as one resumable job.

Stages (each one a folder ``runs/<id>/stages/<name>/``)::

    stitch           mosaic pictures of the labeled cases (what SAM sees)
    finetune-r0      stage F on the labeled cases
    pseudolabel-r0   SAM pseudo-labels of every unlabeled case
    retrain-r0       stage R: V-Net, semi-supervised with the pseudo-labels
    confidence-r0    V-Net probabilities of every unlabeled case -> confidence, trust, review maps
    (SFR+, rounds r = 1..K)
    finetune-rR      stage F on the labeled cases + the trusted cases with their V-Net labels
    pseudolabel-rR   SAM pseudo-labels of the cases that are not trusted
    retrain-rR       V-Net re-trained with those cases only (selective re-training)
    confidence-rR    confidence of every unlabeled case again; who moved is recorded
    finalize         pseudo/, vnet/, review.json, metrics.json, rounds.json

Reuse: every stage has a *key*, the sha256 of what it depends on (file contents of the images
and labels it reads, the keys of the stages it reads from, and its part of the configuration).
A stage whose key matches a finished stage of this run is skipped; one that matches a finished
stage of an earlier run of the project is copied from there (hard links); pseudo-labels and
confidence maps are reused per case.  So a re-run after one new label redoes only what depends
on it, and a re-run after adding one unlabeled case pseudo-labels only that case.

Resume: a stage interrupted (cancel, crash, ``kill -9``) is run again with ``resume=True`` in
its own folder: the training stages continue from their last checkpoint, the per-case stages
skip the cases already written (every file is written atomically, so a file that exists is
complete).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import confidence as conf_mod
from . import events, jobs
from .errors import Cancelled, SFRError
from .io import inside, read_image, read_label, sha256_file, write_volume
from .manifest import Project, load_project, write_json_atomic

#: Default number of SFR+ rounds after the first SFR pass (see docs/run.md for the measurement).
DEFAULT_ROUNDS = 1
CONFIG_VERSION = 1


@dataclass
class RunConfig:
    """Everything a run depends on (written to ``runs/<id>/config.json``)."""

    sfr_plus: bool = False
    rounds: int | None = None  # SFR+ rounds after round 0; None: DEFAULT_ROUNDS with --sfr-plus
    tau: float = conf_mod.TAU
    # a case is trusted only if its predicted structure is >= this x the smallest labeled one (mm^3)
    min_structure: float = conf_mod.MIN_STRUCTURE_FRACTION
    backbone: str | None = None  # None: stage F's default
    checkpoint: str | None = None
    ssl: str | None = None  # None: stage R's default
    network: str | None = None
    device: str = "auto"
    iterations_sam: int | None = None
    iterations_vnet: int | None = None
    batch_size_sam: int | None = None
    pseudo_overlap: float | None = None  # None: stage F's default window overlap
    crop: list | None = None
    seed: int = 1337
    flag_k: int = conf_mod.FLAG_K
    voxel_threshold: float = conf_mod.VOXEL_THRESHOLD
    ranking: str = "mass"
    report: bool = True
    sam_options: dict = field(default_factory=dict)  # extra FinetuneConfig fields
    vnet_options: dict = field(default_factory=dict)  # extra RetrainConfig fields

    @property
    def resolved_rounds(self) -> int:
        if not self.sfr_plus:
            return 0
        return DEFAULT_ROUNDS if self.rounds is None else int(self.rounds)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["resolved_rounds"] = self.resolved_rounds
        d["config_version"] = CONFIG_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# --------------------------------------------------------------------------- hashing




def make_key(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:20]


# --------------------------------------------------------------------------- stage API adapters


def _check_options(cls, options: dict, flag: str) -> None:
    from .validate import check_options

    check_options(cls, options, flag)  # names, types and ranges


def _filter_fields(cls, values: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names and v is not None}


def finetune_config(cfg: RunConfig):
    from .finetune import FinetuneConfig

    values = {
        "backbone": cfg.backbone,
        "checkpoint": cfg.checkpoint,
        "iterations": cfg.iterations_sam,
        "batch_size": cfg.batch_size_sam,
        "seed": cfg.seed,
        "device": cfg.device,
        **cfg.sam_options,
    }
    _check_options(FinetuneConfig, cfg.sam_options, "--sam-option")
    return FinetuneConfig(**_filter_fields(FinetuneConfig, values))


def retrain_config(cfg: RunConfig):
    from .retrain import RetrainConfig

    values = {
        "network": cfg.network,
        "ssl": cfg.ssl,
        "iterations": cfg.iterations_vnet,
        "crop": tuple(cfg.crop) if cfg.crop else None,
        "seed": cfg.seed,
        "device": cfg.device,
        **cfg.vnet_options,
    }
    _check_options(RetrainConfig, cfg.vnet_options, "--vnet-option")
    return RetrainConfig(**_filter_fields(RetrainConfig, values))


def validate_config(cfg: RunConfig) -> None:
    """Build both stage configurations now, so a bad option fails before a run folder exists."""
    finetune_config(cfg)
    retrain_config(cfg)
    if cfg.ranking not in conf_mod.RANKINGS:
        raise SFRError(f"unknown slice ranking {cfg.ranking!r} (choose from {', '.join(conf_mod.RANKINGS)})")
    if cfg.flag_k < 0:
        raise SFRError(f"--flag-k must be >= 0, got {cfg.flag_k}")


def _config_dict(obj) -> dict:
    d = dataclasses.asdict(obj)
    # where a stage may run does not change what it computes
    for k in ("device", "save_every", "threads"):
        d.pop(k, None)
    return d


def is_oom(exc: BaseException) -> bool:
    """A GPU (CUDA or MPS) out-of-memory error."""
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _batch_fields(stage_cfg) -> list:
    return [n for n in ("batch_size", "labeled_bs", "unlabeled_bs") if hasattr(stage_cfg, n)]


def with_oom_retry(call, stage_cfg, what: str):
    """Run ``call(stage_cfg, after_oom)``; on GPU out-of-memory halve the batch and retry.

    After batch 1 also runs out of memory: SFRError suggesting LiteMedSAM or the CPU.
    """
    retried = False
    while True:
        try:
            return call(stage_cfg, retried)
        except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
            if not is_oom(exc):
                raise
            message = str(exc).splitlines()[0][:200]
        # outside the except block: the failed call's frames (and their GPU tensors) are released
        import gc

        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            pass
        sizes = {n: int(getattr(stage_cfg, n)) for n in _batch_fields(stage_cfg)}
        if not sizes or all(v <= 1 for v in sizes.values()):
            raise SFRError(
                f"the GPU ran out of memory in {what} even with batch size 1 ({message}); use a smaller "
                "backbone (--backbone lite_medsam) or run on the CPU (--device cpu)"
            )
        smaller = {n: max(1, v // 2) for n, v in sizes.items()}
        events.log(f"GPU out of memory in {what} with batch {sizes}; retrying with batch {smaller}", "warning")
        stage_cfg = dataclasses.replace(stage_cfg, **smaller)
        retried = True


# --------------------------------------------------------------------------- file helpers


def link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".tmp-link-{os.getpid()}-{dst.name}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a finished folder (hard links where possible), atomically: ``dst`` appears complete."""
    tmp = dst.with_name(f".tmp-{dst.name}-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)

    def _copy(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, tmp, copy_function=_copy)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)


def _read_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default


# --------------------------------------------------------------------------- the runner


class Runner:
    """Runs the stages of one run folder, skipping, reusing or resuming them by key."""

    def __init__(self, project: Project, run_path: Path, cfg: RunConfig):
        self.project = project
        self.run_path = Path(run_path)
        self.cfg = cfg
        self.stages_path = self.run_path / "stages.json"
        self.records = _read_json(self.stages_path, {}) or {}
        self.should_stop = jobs.stop_checker(self.run_path)
        self.index = 0
        self.planned = 0

    # ---------------------------------------------------------------- bookkeeping
    def save(self) -> None:
        write_json_atomic(self.stages_path, self.records)

    def stage_dir(self, name: str) -> Path:
        return self.run_path / "stages" / name

    def check_cancel(self) -> None:
        if self.should_stop():
            raise Cancelled("cancel requested")

    def _find_elsewhere(self, name: str, key: str) -> Path | None:
        """A finished stage with this key in another run of the project (newest first)."""
        runs = jobs.runs_dir(self.project.root)
        candidates = []
        for rec_path in runs.glob("*/stages.json"):
            if rec_path.parent == self.run_path:
                continue
            recs = _read_json(rec_path, {}) or {}
            for other_name, rec in recs.items():
                if rec.get("key") == key and rec.get("status") == "done":
                    d = rec_path.parent / "stages" / other_name
                    if (d / "stage.json").exists():
                        candidates.append((rec_path.stat().st_mtime, d))
        if not candidates:
            return None
        return max(candidates)[1]

    def run_stage(self, name: str, key: str, fn, reusable: bool = True) -> Path:
        """Run ``fn(out_dir, resume)`` unless a finished stage with ``key`` exists."""
        self.check_cancel()
        self.index += 1
        d = self.stage_dir(name)
        rec = self.records.get(name)
        events.stage(name, "start", pipeline=True, index=self.index, of=self.planned, key=key)
        if rec and rec.get("key") == key and rec.get("status") == "done" and (d / "stage.json").exists():
            events.stage(name, "skipped", pipeline=True, reason="finished earlier in this run")
            return d
        if reusable:
            src = self._find_elsewhere(name, key)
            if src is not None:
                t0 = time.monotonic()
                copy_tree(src, d)
                self.records[name] = {
                    "key": key, "status": "done", "reused_from": str(src.relative_to(self.project.root)),
                    "seconds": 0.0, "copy_seconds": round(time.monotonic() - t0, 3),
                    "finished": jobs.utcnow(),
                }
                self.save()
                events.stage(name, "skipped", pipeline=True, reason=f"reused {src.parent.parent.name}")
                events.log(f"{name}: inputs unchanged, reused from run {src.parent.parent.name}")
                return d
        resume = bool(rec and rec.get("key") == key and d.exists())
        if d.exists() and not resume:
            shutil.rmtree(d)
        d.mkdir(parents=True, exist_ok=True)
        previous = float(rec.get("seconds", 0.0)) if resume else 0.0
        self.records[name] = {"key": key, "status": "running", "started": jobs.utcnow(),
                              "seconds": previous, "attempts": (rec or {}).get("attempts", 0) + 1 if resume else 1}
        self.save()
        if resume:
            events.log(f"{name}: resuming")
        t0 = time.monotonic()
        try:
            extra = fn(d, resume) or {}
        except Cancelled:
            self.records[name].update(status="cancelled", seconds=round(previous + time.monotonic() - t0, 3))
            self.save()
            raise
        except BaseException:
            self.records[name].update(status="failed", seconds=round(previous + time.monotonic() - t0, 3))
            try:
                self.save()
            except OSError:
                pass
            raise
        write_json_atomic(d / "stage.json", {"name": name, "key": key, **extra})
        self.records[name].update(status="done", seconds=round(previous + time.monotonic() - t0, 3),
                                  finished=jobs.utcnow(), **extra)
        self.save()
        events.stage(name, "done", pipeline=True, seconds=self.records[name]["seconds"])
        return d


# --------------------------------------------------------------------------- the pipeline


class Pipeline:
    def __init__(self, project: Project, run_path: Path, cfg: RunConfig):
        self.project = project
        self.cfg = cfg
        self.run_path = Path(run_path)
        self.runner = Runner(project, run_path, cfg)
        self.labeled = project.by_role("labeled")
        self.unlabeled = project.by_role("unlabeled")
        self.validation = project.by_role("validation")
        if not self.labeled:
            raise SFRError("the project has no labeled case: label at least one", project.manifest_path)
        if not self.unlabeled:
            raise SFRError("the project has no unlabeled case to segment", project.manifest_path)
        self.sha = {}
        for c in project.cases:
            img = project.image_path(c)
            if not img.exists():
                raise SFRError(f"image of case {c.name!r} not found", img)
            self.sha[c.name] = sha256_file(img)
        self.label_sha = {c.name: sha256_file(project.label_path(c)) for c in self.labeled}
        self._labeled_vols = None  # labeled structures' volumes (mm^3), read when a decision needs them

    # ---------------------------------------------------------------- keys
    def labeled_fingerprint(self) -> list:
        return [[c.name, self.sha[c.name], self.label_sha[c.name]] for c in self.labeled]

    # ---------------------------------------------------------------- stages
    def stage_stitch(self) -> Path:
        key = make_key("stitch", self.labeled_fingerprint(), self._canvas())

        def fn(d: Path, resume: bool):
            from .stitching import IGNORE_INDEX, make_plan, stitch
            from .visual import overlay_rgb, save_png, side_by_side, to_uint8

            plans = {}
            for c in self.labeled[:4]:
                img = read_image(self.project.image_path(c))
                lab = read_label(self.project.label_path(c), img)
                plan = self._plan(img.shape, make_plan)
                mosaic = stitch(to_uint8(img.array), plan, fill=0)
                labs = stitch(lab.array, plan, fill=IGNORE_INDEX, mode="nearest")
                tiles = [overlay_rgb(mosaic[s], labs[s], ignore=IGNORE_INDEX) for s in range(plan.slabs)]
                save_png(side_by_side(tiles), inside(d, f"{c.name}.png"))
                plans[c.name] = plan.to_dict()
            return {"plans": plans}

        return self.runner.run_stage("stitch", key, fn)

    def _canvas(self) -> int:
        backbone = self._backbone()
        try:
            from .sam import get_spec

            return int(get_spec(backbone).canvas)
        except Exception:  # noqa: BLE001 - only a picture depends on it
            return 256 if "lite" in str(backbone) else 1024

    def _backbone(self) -> str:
        try:
            return finetune_config(self.cfg).backbone
        except Exception:  # noqa: BLE001
            return self.cfg.backbone or "vit_b"

    def _plan(self, shape, make_plan):
        """The backbone's layout (its grid when it has one) applied to the whole volume."""
        canvas = self._canvas()
        grid = None
        try:
            from .sam import get_spec

            grid = get_spec(self._backbone()).default_grid
        except Exception:  # noqa: BLE001
            pass
        try:
            return make_plan(shape, canvas, grid=grid)
        except ValueError:
            scale = min(1.0, canvas / max(shape[1], shape[2]))
            return make_plan(shape, canvas, scale=scale)

    def stage_finetune(self, r: int, extra_labeled: list) -> Path:
        from .finetune import finetune

        ft_cfg = finetune_config(self.cfg)
        extra_fp = [[c, self.sha[c], sha256_file(p)] for c, _, p in extra_labeled]
        key = make_key("finetune", _config_dict(ft_cfg), self.project.classes, self.labeled_fingerprint(), extra_fp)

        def fn(d: Path, resume: bool):
            from .finetune import MODEL_META

            def call(stage_cfg, after_oom):
                # after an out-of-memory retry the batch differs: the stage starts again
                return finetune(self.project, stage_cfg, out_dir=d, resume=resume and not after_oom,
                                should_stop=self.runner.should_stop, extra_labeled=tuple(extra_labeled))

            with_oom_retry(call, ft_cfg, "SAM fine-tuning")
            meta = _read_json(d / MODEL_META, {}) or {}
            return {"model_id": meta.get("model_id"), "extra_labeled": [c for c, _, _ in extra_labeled]}

        return self.runner.run_stage(f"finetune-r{r}", key, fn)

    def stage_pseudolabel(self, r: int, model_dir: Path, cases: list) -> Path:
        from .pseudolabel import pseudolabel

        model_key = self.runner.records[model_dir.name]["key"]
        case_keys = {c: make_key("pseudo-case", model_key, c, self.sha[c], self.cfg.pseudo_overlap) for c in cases}
        key = make_key("pseudolabel", model_key, sorted(case_keys.items()))

        def fn(d: Path, resume: bool):
            done = _read_json(d / "cases.json", {}) or {}
            index_path = d / "pseudo-labels.json"
            # per-case reuse: the same SAM model and image in an earlier run
            for c in cases:
                if c in done:
                    continue
                src = self._find_case_output("pseudolabel", case_keys[c], c)
                if src is not None:
                    for suffix in (".nii.gz", "_confidence.nii.gz"):
                        link_or_copy(src / f"{c}{suffix}", inside(d, f"{c}{suffix}"))
                    self._copy_index_entry(src / "pseudo-labels.json", index_path, c)
                    done[c] = {"key": case_keys[c], "reused_from": str(src.relative_to(self.project.root))}
                    write_json_atomic(d / "cases.json", done)
            index = _read_json(index_path, {}) or {}
            todo = [c for c in cases if not (c in index.get("cases", {})
                                              and (d / f"{c}.nii.gz").exists()
                                              and (d / f"{c}_confidence.nii.gz").exists())]
            if todo:
                # the stage writes its files case by case; cases done before a cancel are kept
                extra = {} if self.cfg.pseudo_overlap is None else {"overlap": float(self.cfg.pseudo_overlap)}
                pseudolabel(self.project, model_dir=model_dir, out_dir=d, cases=todo,
                            device=self.cfg.device, should_stop=self.runner.should_stop, **extra)
            for c in cases:
                done.setdefault(c, {"key": case_keys[c]})
                done[c]["key"] = case_keys[c]
            write_json_atomic(d / "cases.json", done)
            return {"cases": cases, "computed": todo}

        return self.runner.run_stage(f"pseudolabel-r{r}", key, fn)

    @staticmethod
    def _copy_index_entry(src_index: Path, dst_index: Path, case: str) -> None:
        """Carry one case's record (and the model fields) into this stage's pseudo-labels.json."""
        src = _read_json(src_index, {}) or {}
        dst = _read_json(dst_index, None)
        if dst is None:
            dst = {k: v for k, v in src.items() if k != "cases"}
            dst["cases"] = {}
        if case in src.get("cases", {}):
            dst.setdefault("cases", {})[case] = src["cases"][case]
        write_json_atomic(dst_index, dst)

    def _find_case_output(self, kind: str, case_key: str, case: str) -> Path | None:
        runs = jobs.runs_dir(self.project.root)
        for cases_json in sorted(runs.glob(f"*/stages/{kind}-r*/cases.json"), key=lambda p: -p.stat().st_mtime):
            if cases_json.parent.parent.parent == self.run_path:
                continue
            entry = (_read_json(cases_json, {}) or {}).get(case)
            if entry and entry.get("key") == case_key and (cases_json.parent / f"{case}.nii.gz").exists():
                return cases_json.parent
        return None

    def stage_retrain(self, r: int, pseudo_dir: Path, cases: list, sam_model_dir: Path) -> Path:
        from .retrain import retrain

        rt_cfg = retrain_config(self.cfg)
        pseudo_key = self.runner.records[pseudo_dir.name]["key"]
        key = make_key("retrain", _config_dict(rt_cfg), self.project.classes, self.labeled_fingerprint(),
                       pseudo_key, sorted(cases), [self.sha[c] for c in sorted(cases)])

        def fn(d: Path, resume: bool):
            def call(stage_cfg, after_oom):
                return retrain(self.project, stage_cfg, pseudo_dir=pseudo_dir, out_dir=d,
                               resume=resume and not after_oom, should_stop=self.runner.should_stop,
                               unlabeled_cases=list(cases), sam_model_dir=sam_model_dir)

            with_oom_retry(call, rt_cfg, "V-Net re-training")
            return {"unlabeled_cases": list(cases)}

        return self.runner.run_stage(f"retrain-r{r}", key, fn)

    def stage_confidence(self, r: int, model_dir: Path, sam_dir: Path | None) -> Path:
        """V-Net probabilities of every unlabeled case -> label, confidence map, review entry.

        The prediction of a case is keyed by the model and the image only; the review settings
        (tau, k, thresholds) are applied to the saved maps, so changing them re-predicts nothing.
        """
        model_key = self.runner.records[model_dir.name]["key"]
        params = {"tau": self.cfg.tau, "min_structure": self.cfg.min_structure, "k": self.cfg.flag_k,
                  "voxel_threshold": self.cfg.voxel_threshold,
                  "ranking": self.cfg.ranking}
        names = [c.name for c in self.unlabeled]
        case_keys = {c: make_key("confidence-case", model_key, c, self.sha[c]) for c in names}
        key = make_key("confidence", sorted(case_keys.items()), params)

        def review_entry(review, img) -> dict:
            """What cases.json keeps of a case's review (with the image, for the structure's volume)."""
            return {**review.to_json(), "slice_confidence": review.slice_confidence,
                    "foreground_voxels": review.foreground_voxels,
                    "structure_mm3": round(review.foreground_voxels * float(np.prod(img.spacing)), 3),
                    "params": params}

        def fn(d: Path, resume: bool):
            from .retrain.inference import load_model, predict_volume

            done = _read_json(d / "cases.json", {}) or {}
            model = None
            bar = events.Progress("confidence", len(names))
            for i, c in enumerate(names):
                self.runner.check_cancel()
                inside(d, f"{c}_lowconf.nii.gz")  # the case's files stay in the stage folder
                case = self.project.case(c)
                entry = done.get(c)
                have = entry and entry.get("key") == case_keys[c] and (d / f"{c}_lowconf.nii.gz").exists()
                if not have:
                    src = self._find_case_output("confidence", case_keys[c], c)
                    if src is not None:
                        for suffix in (".nii.gz", "_confidence.nii.gz", "_lowconf.nii.gz"):
                            link_or_copy(src / f"{c}{suffix}", d / f"{c}{suffix}")
                        entry = (_read_json(src / "cases.json", {}) or {})[c]
                        have = True
                if have and entry.get("params") != params:
                    img = read_image(self.project.image_path(case))
                    review = conf_mod.review_from_maps(
                        c, read_image(d / f"{c}_confidence.nii.gz").array, read_label(d / f"{c}.nii.gz").array,
                        tau=self.cfg.tau, k=self.cfg.flag_k, voxel_threshold=self.cfg.voxel_threshold,
                        min_foreground=self._min_foreground(img),
                        ranking=self.cfg.ranking)
                    write_volume(img.with_array(review.lowconf.astype(np.uint8)), d / f"{c}_lowconf.nii.gz")
                    entry = {**entry, **review_entry(review, img)}
                elif not have:
                    if model is None:
                        model = load_model(model_dir, self.cfg.device)
                    img = read_image(self.project.image_path(case))
                    prob = predict_volume(model, img.array)
                    review = conf_mod.review_case(c, prob, tau=self.cfg.tau, k=self.cfg.flag_k,
                                                  min_foreground=self._min_foreground(img),
                                                  voxel_threshold=self.cfg.voxel_threshold,
                                                  ranking=self.cfg.ranking)
                    write_volume(img.with_array(review.label.astype(np.uint8)), d / f"{c}.nii.gz")
                    write_volume(img.with_array(review.conf.astype(np.float32)), d / f"{c}_confidence.nii.gz")
                    write_volume(img.with_array(review.lowconf.astype(np.uint8)), d / f"{c}_lowconf.nii.gz")
                    entry = {"key": case_keys[c], **review_entry(review, img)}
                    entry.update(self._score(case, review.label, sam_dir))
                done[c] = entry
                write_json_atomic(d / "cases.json", done)
                bar.update(i + 1, case=c)
            return {"cases": names}

        return self.runner.run_stage(f"confidence-r{r}", key, fn)

    def _min_foreground(self, image) -> float:
        """Voxels of ``image``'s grid that the predicted structure needs for the case to be trusted:
        ``min_structure`` x the smallest labeled structure, by physical volume."""
        if not self.cfg.min_structure:
            return 0.0
        return self.cfg.min_structure * min(self._labeled_mm3()) / float(np.prod(image.spacing))

    def _labeled_mm3(self) -> list:
        """Physical volume (mm^3) of the structure of every labeled case, read once."""
        if self._labeled_vols is None:
            vols = []
            for c in self.labeled:
                lab = read_label(self.project.label_path(c))
                vols.append(np.count_nonzero(lab.array > 0) * float(np.prod(lab.spacing)))
            self._labeled_vols = vols
        return self._labeled_vols

    def _score(self, case, label: np.ndarray, sam_dir: Path | None) -> dict:
        """Dice of the V-Net label (and of SAM's pseudo-label) when hidden ground truth exists."""
        from .metrics import dice

        if not case.label:
            return {}
        gt_path = self.project.label_path(case)
        if not gt_path.exists():
            return {}
        gt = read_label(gt_path).array
        out = {"dice": _mean_dice(label, gt, self.project.num_classes, dice)}
        if sam_dir is not None and (sam_dir / f"{case.name}.nii.gz").exists():
            sam = read_label(sam_dir / f"{case.name}.nii.gz").array
            out["sam_dice"] = _mean_dice(sam, gt, self.project.num_classes, dice)
        return out

    # ---------------------------------------------------------------- the whole run
    def run(self) -> dict:
        cfg = self.cfg
        rounds = cfg.resolved_rounds
        self.runner.planned = 2 + 4 * (rounds + 1)
        names = [c.name for c in self.unlabeled]
        self.stage_stitch()
        ft = self.stage_finetune(0, [])
        pl = self.stage_pseudolabel(0, ft, names)
        rt = self.stage_retrain(0, pl, names, ft)
        cf = self.stage_confidence(0, rt, pl)
        history = [self._round_record(0, cf, None, names, [])]
        final_cf, final_rt = cf, rt
        for r in range(1, rounds + 1):
            reviews = _read_json(cf / "cases.json", {})
            trusted = [c for c in names if reviews[c]["trusted"]]
            untrusted = [c for c in names if c not in trusted]
            if not trusted:
                events.log(f"SFR+ round {r}: no case reached tau={cfg.tau}; stopping the rounds")
                history[-1]["stopped"] = "no trusted case"
                break
            if not untrusted:
                events.log(f"SFR+ round {r}: every case is trusted; stopping the rounds")
                history[-1]["stopped"] = "all cases trusted"
                break
            extra = [(c, self.project.image_path(self.project.case(c)), cf / f"{c}.nii.gz") for c in trusted]
            ft = self.stage_finetune(r, extra)
            pl = self.stage_pseudolabel(r, ft, untrusted)
            rt = self.stage_retrain(r, pl, untrusted, ft)
            cf_new = self.stage_confidence(r, rt, pl)
            rec = self._round_record(r, cf_new, cf, untrusted, trusted)
            history.append(rec)
            kept = history[-2]  # a drifted round ends the loop, so the round before is the kept one
            if conf_mod.structure_drift(kept.get("structure_ratio"), rec.get("structure_ratio")):
                rec["drift"] = True
                rec["stopped"] = "structure drift"
                events.log(
                    f"WARNING: SFR+ round {r}: the predicted structures drifted away from the labeled ones (median "
                    f"{rec['structure_ratio']:.2f} x the labeled structure, round {kept['round']}: "
                    f"{kept['structure_ratio']:.2f} x); the round probably made the labels worse, so the results of "
                    f"round {kept['round']} are kept and the rounds stop (rounds.json records both)")
                break
            cf, final_cf, final_rt = cf_new, cf_new, rt
        self.runner.planned = self.runner.index + 1  # + metrics
        return self.finalize(final_cf, final_rt, history)

    def _round_record(self, r: int, cf: Path, prev: Path | None, retrained: list, sam_extra: list) -> dict:
        now = _read_json(cf / "cases.json", {})
        before = _read_json(prev / "cases.json", {}) if prev else {}
        cases = {}
        for c, e in now.items():
            row = {"confidence": e["confidence"], "trusted": e["trusted"]}
            if "dice" in e:
                row["dice"] = e["dice"]
            if "sam_dice" in e:
                row["sam_dice"] = e["sam_dice"]
            if c in before:
                row["confidence_change"] = round(e["confidence"] - before[c]["confidence"], 6)
                row["was_trusted"] = before[c]["trusted"]
            cases[c] = row
        rec = {
            "round": r,
            "sam_trained_with_pseudo": sorted(sam_extra),
            "retrained_with": sorted(retrained),
            "trusted": sorted(c for c, e in now.items() if e["trusted"]),
            "moved_to_trusted": sorted(c for c, row in cases.items() if row.get("was_trusted") is False and row["trusted"]),
            "moved_to_untrusted": sorted(c for c, row in cases.items() if row.get("was_trusted") and not row["trusted"]),
            "mean_confidence": round(float(np.mean([e["confidence"] for e in now.values()])), 6),
            "cases": cases,
        }
        mm3 = [e.get("structure_mm3") for e in now.values()]
        if mm3 and all(v is not None for v in mm3) and self.labeled:
            rec["structure_ratio"] = round(float(np.median(mm3)) / float(np.median(self._labeled_mm3())), 6)
        dices = [row["dice"] for row in cases.values() if row.get("dice") is not None]
        if dices:
            rec["mean_dice"] = round(float(np.mean(dices)), 6)
        sam = [row["sam_dice"] for row in cases.values() if row.get("sam_dice") is not None]
        if sam:
            rec["mean_sam_dice"] = round(float(np.mean(sam)), 6)
        events.log(
            f"round {r}: {len(rec['trusted'])}/{len(now)} cases trusted (tau {self.cfg.tau}), mean confidence "
            f"{rec['mean_confidence']:.4f}" + (f", mean Dice {rec['mean_dice']:.4f}" if dices else "")
            + (f"; moved to trusted: {', '.join(rec['moved_to_trusted'])}" if rec["moved_to_trusted"] else "")
            + (f"; moved out: {', '.join(rec['moved_to_untrusted'])}" if rec["moved_to_untrusted"] else "")
        )
        return rec

    def finalize(self, cf: Path, rt: Path, history: list) -> dict:
        """Metrics (cached as a stage), then publish the final results into the run folder."""
        val_fp = [[c.name, self.sha[c.name], sha256_file(self.project.label_path(c))]
                  for c in self.validation if c.label and self.project.label_path(c).exists()]
        unl_gt = [[c.name, sha256_file(self.project.label_path(c))]
                  for c in self.unlabeled if c.label and self.project.label_path(c).exists()]
        key = make_key("metrics", self.runner.records[cf.name]["key"], self.runner.records[rt.name]["key"],
                       val_fp, unl_gt)

        def fn(d: Path, resume: bool):
            metrics = self._metrics(cf, rt, d)
            write_json_atomic(d / "metrics.json", metrics)
            return {"metrics": sorted(metrics)}

        md = self.runner.run_stage("metrics", key, fn)
        out = self.run_path
        reviews = _read_json(cf / "cases.json", {})
        for c in reviews:
            for suffix in (".nii.gz", "_confidence.nii.gz", "_lowconf.nii.gz"):
                link_or_copy(cf / f"{c}{suffix}", inside(out / "pseudo", f"{c}{suffix}"))
        copy_tree(rt, out / "vnet")
        if (md / "validation").is_dir():
            copy_tree(md / "validation", out / "validation")
        keys = ("case", "confidence", "trusted", "flagged_slices", "low_confidence_voxels")
        write_json_atomic(out / "review.json", {"cases": [{k: reviews[c][k] for k in keys} for c in reviews]})
        write_json_atomic(out / "slices.json",
                          {c: {"slice_confidence": reviews[c].get("slice_confidence")} for c in reviews})
        write_json_atomic(out / "rounds.json", {"tau": self.cfg.tau, "final_round": int(cf.name.rsplit("-r", 1)[1]),
                                                "rounds": history})
        metrics = _read_json(md / "metrics.json", {}) or {}
        if metrics:
            write_json_atomic(out / "metrics.json", metrics)
        events.log(f"results in {out}: pseudo/ ({len(reviews)} cases), vnet/, review.json"
                   + (", metrics.json" if metrics else ""))
        return {"review": str(out / "review.json")}

    def _metrics(self, cf: Path, rt: Path, work: Path) -> dict:
        from .evaluation import evaluate_pairs

        out = {}
        pairs = [(c.name, cf / f"{c.name}.nii.gz", self.project.label_path(c))
                 for c in self.unlabeled if c.label and self.project.label_path(c).exists()]
        if pairs:
            out["pseudo_labels"] = evaluate_pairs(pairs)
        val = [c for c in self.validation if c.label and self.project.label_path(c).exists()]
        if val:
            from .retrain.inference import load_model, predict_volume

            model = load_model(rt, self.cfg.device)
            vdir = work / "validation"
            vpairs = []
            for c in val:
                self.runner.check_cancel()
                target = inside(vdir, f"{c.name}.nii.gz")
                if not target.exists():  # resumed: cases already predicted are kept
                    img = read_image(self.project.image_path(c))
                    prob = predict_volume(model, img.array)
                    label = np.asarray(_numpy(prob)).argmax(axis=0).astype(np.uint8)
                    write_volume(img.with_array(label), target)
                vpairs.append((c.name, target, self.project.label_path(c)))
            out["validation"] = evaluate_pairs(vpairs)
        return out


def _numpy(x):
    try:
        return x.detach().float().cpu().numpy()
    except AttributeError:
        return np.asarray(x)


def _mean_dice(pred, gt, num_classes: int, dice) -> float | None:
    vals = [dice(pred == k, gt == k) for k in range(1, num_classes)]
    vals = [v for v in vals if v is not None]
    return round(float(np.mean(vals)), 6) if vals else None


# --------------------------------------------------------------------------- job entry points


def create_run(project: Project, cfg: RunConfig, run_id: str | None = None) -> Path:
    """Make ``runs/<id>/`` with its resolved config and a ``starting`` status; set ``latest``."""
    run_id = run_id or jobs.new_run_id()
    path = jobs.runs_dir(project.root) / run_id
    path.mkdir(parents=True, exist_ok=False)
    # the project's absolute path: `sfr report` from any folder finds it, and refuses another one
    write_json_atomic(path / "config.json", {"run_id": run_id, "project": str(Path(project.root).resolve()),
                                             **cfg.to_dict()})
    write_json_atomic(path / jobs.STATUS_NAME, {"state": "starting", "run_id": run_id, "created": jobs.utcnow()})
    jobs.set_latest(project.root, run_id)
    return path


def load_run_config(run_path: Path) -> RunConfig:
    data = _read_json(Path(run_path) / "config.json")
    if data is None:
        raise SFRError("run has no config.json (not a run folder)", run_path)
    return RunConfig.from_dict(data)


DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)
#: How libraries that do not raise OSError (torch.save, ITK writers) word a failed write.
DISK_FULL_TEXT = ("no space left", "disk quota", "file too large", "file write failed", "could not write",
                  "unable to write", "errno 28", "errno 27",
                  # torch.save's C++ writer when a write fails part-way
                  "iostream error", "pytorchstreamwriter failed", "unexpected pos")


def is_disk_full(exc: BaseException, folder: "Path | None" = None) -> bool:
    """A write that failed because the disk (or a quota or file-size limit) is full.

    Also true for any error while ``folder``'s file system has less than 20 MB free.
    """
    if folder is not None:
        try:
            if shutil.disk_usage(folder).free < 20 * 2**20:
                return True
        except OSError:
            pass
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return True
        text = str(exc).lower()
        if any(t in text for t in DISK_FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def execute(project_root, run_path: Path) -> int:
    """Run (or continue) the run in ``run_path`` in this process; returns the exit status."""
    run_path = Path(run_path)
    project = load_project(project_root)
    cfg = load_run_config(run_path)
    run_id = run_path.name
    lock = jobs.ProjectLock(project.root, run_id)
    lock.acquire()
    sinks = []
    status = jobs.StatusWriter(run_path, jobs.read_status(run_path))
    previous_term = None
    try:
        ev = events.open_sink(run_path / "events.jsonl")
        sinks.append(ev)
        log_fh = open(run_path / "log.txt", "a", encoding="utf-8", buffering=1)

        def log_sink(rec, fh=log_fh):
            if rec.get("event") == "log":
                fh.write(f"{rec['time']} {rec.get('level', 'info')}: {rec.get('message')}\n")
            elif rec.get("event") == "stage" and rec.get("pipeline"):
                extra = f" ({rec['reason']})" if rec.get("reason") else ""
                fh.write(f"{rec['time']} stage {rec['stage']} {rec['status']}{extra}\n")

        events.add_sink(log_sink)
        sinks.append(log_sink)
        sinks.append(log_fh)
        events.add_sink(status)
        sinks.append(status)
        status.set(state="running", run_id=run_id, pid=os.getpid(), host=socket.gethostname(),
                   proc_start=jobs._proc_start(os.getpid()), started=status.status.get("started") or jobs.utcnow(),
                   resumed=jobs.utcnow() if status.status.get("started") else None,
                   message=None, error=None, finished=None)

        def on_term(signum, frame):  # `kill PID` = cancel at the next safe point
            jobs.request_cancel(run_path)

        try:
            previous_term = signal.signal(signal.SIGTERM, on_term)
        except ValueError:  # not the main thread
            previous_term = None
        events.log(f"run {run_id} on project {project.root} ({'SFR+' if cfg.sfr_plus else 'SFR'}, "
                   f"{cfg.resolved_rounds} SFR+ round(s))")
        t0 = time.monotonic()
        try:
            pipe = Pipeline(project, run_path, cfg)
            pipe.run()
        except Cancelled:
            status.set(state="cancelled", finished=jobs.utcnow(),
                       message="cancelled; everything finished is saved; continue with 'sfr run PROJECT --resume'")
            events.log(f"run {run_id} cancelled at a safe point; continue with 'sfr run {project.root} --resume'",
                       "warning")
            return jobs.EXIT_CANCELLED
        except SFRError as exc:
            status.set(state="failed", finished=jobs.utcnow(), error=str(exc))
            raise
        except BaseException as exc:
            if isinstance(exc, Exception) and is_disk_full(exc, run_path):
                from . import io as sfr_io

                where = getattr(exc, "filename", None) or sfr_io.LAST_OUTPUT or "a file"
                msg = (f"disk full while writing {where}: the run stopped; files already written are "
                       "complete (all writes are atomic); free some space and continue with "
                       "'sfr run PROJECT --resume'")
                status.set(state="failed", finished=jobs.utcnow(), error=msg)
                raise SFRError(msg, run_path) from None
            status.set(state="failed", finished=jobs.utcnow(), error=f"{type(exc).__name__}: {exc}")
            raise
        status.set(state="done", finished=jobs.utcnow(), seconds=round(time.monotonic() - t0, 1), stage="done",
                   step=None, total=None, eta_s=None)
        report_path = None
        if cfg.report:
            try:
                from .report import write_report

                report_path = write_report(run_path)
                status.set(report=str(report_path))
            except Exception as exc:  # noqa: BLE001 - the results are complete without the report
                events.log(f"could not write the report: {type(exc).__name__}: {exc}", "warning")
        events.log(f"run {run_id} finished: {run_path}")
        events.emit("result", run_id=run_id, run=str(run_path), review=str(run_path / "review.json"),
                    report=str(report_path) if report_path else None)
        return 0
    finally:
        if previous_term is not None:
            try:
                signal.signal(signal.SIGTERM, previous_term)
            except ValueError:
                pass
        for s in sinks:
            events.remove_sink(s)
            if hasattr(s, "close"):
                try:
                    s.close()
                except OSError:
                    pass
        lock.release()
