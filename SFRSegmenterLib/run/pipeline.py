"""The stages of ``sfr run`` and how they feed each other (one folder ``runs/<id>/stages/<name>/`` each)::

    stitch           mosaic pictures of the labeled cases (what SAM sees)
    finetune-r0      stage F on the labeled cases
    pseudolabel-r0   SAM pseudo-labels of every unlabeled case
    retrain-r0       stage R: V-Net, semi-supervised with the pseudo-labels
    confidence-r0    V-Net probabilities of every unlabeled case -> label, confidence map, measurements
    (SFR+, rounds r = 1..K; the loop and who is trusted: ..sfrplus.run_rounds)
    finetune-rR      stage F on the labeled cases + the trusted cases with their V-Net labels
    pseudolabel-rR   SAM pseudo-labels of every unlabeled case with that model
    retrain-rR       V-Net re-trained: untrusted cases with the new pseudo-labels, trusted ones with
                     the last round's V-Net labels (--round-retrain untrusted: the untrusted only)
    confidence-rR    every unlabeled case again: label, confidence, quality signals
    metrics          metrics of the published labels and of the validation cases
    (published)      the round of best estimated quality: pseudo/, vnet/, review.json, slices.json,
                     rounds.json, metrics.json

Each stage method builds its key (:mod:`.cache`) and calls one library function with explicit
inputs: the model folder, the pseudo-label folder, the SAM model the pseudo-labels must come
from, the cases (stage R, the pseudo-labels and the confidence stage's new cases through
:func:`.distributed.call`: in this process, or on ``--processes N`` torchrun processes).  The
methods are :class:`..sfrplus.RoundStages`; reuse and resume are :class:`~.cache.StageCache`'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import encoder_store, events, jobs, quality, sfrplus
from ..errors import SFRError
from ..labelnext import rank_cases
from ..io import inside, read_json, sha256_file, write_json_atomic
from ..manifest import Project
from ..review import CASE_SUFFIXES, review_record
from ..runfolder import PSEUDO_FOLDER, REVIEW_JSON
from . import distributed, stages, warmstart
from .cache import StageCache, copy_tree, link_or_copy, make_key
from . import progress as overall
from .config import RunConfig, finetune_config, retrain_config, review_settings, stage_settings
from .oom import with_oom_retry
from .estimate import emit_estimate

#: The files of a case in a pseudo-label stage (stage F's pseudo-labels and their confidence).
PSEUDO_SUFFIXES = (".nii.gz", "_confidence.nii.gz")
#: The file of a confidence stage's case written last (the case is complete when it exists).
LAST_MAP = CASE_SUFFIXES[-1]


class Pipeline:
    def __init__(self, project: Project, run_path: Path, cfg: RunConfig):
        self.project = project
        self.cfg = cfg
        self.run_path = Path(run_path)
        self.runner = StageCache(project.root, run_path)
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
        self.policy = sfrplus.build_policy(cfg)
        self._labeled_vols = None  # labeled structures' volumes (mm^3), read when a decision needs them
        self._class_vols = None  # median labeled volume of each class (mm^3), for the quality signals
        # a warm start: stage F and stage R start from a finished run's models (..warmstart)
        self.warm = warmstart.resolve(project, cfg.warm_start_from) if cfg.warm_start_from else None
        self.warm_key = self.warm.key() if self.warm else None
        # stage R, the pseudo-labels and the confidence stage on this many torchrun processes (..distributed)
        from ..device import resolve_device

        self.processes, why = distributed.resolve_processes(cfg.processes, resolve_device(cfg.device))
        if self.processes > 1:
            events.log(f"stage R, the pseudo-labels and the confidence stage on {self.processes} processes ({why})")

    def earlier_runs(self) -> list:
        """The project's other run folders (:class:`~..runfolder.RunFolder`), newest first."""
        from ..runfolder import RunFolder

        runs = jobs.runs_dir(self.project.root)
        others = sorted((p for p in runs.iterdir() if p.is_dir() and p != self.run_path), reverse=True) if runs.is_dir() else []
        return [RunFolder(p) for p in others]

    def earlier_embeddings(self) -> list:
        """The frozen-encoder embedding folders of the project's other runs, newest first."""
        return [r.embeddings for r in self.earlier_runs()]

    def labeled_fingerprint(self) -> list:
        return [[c.name, self.sha[c.name], self.label_sha[c.name]] for c in self.labeled]

    # ---------------------------------------------------------------- stages
    def stage_stitch(self) -> Path:
        backbone = stages.backbone_of(finetune_config, self.cfg)
        key = make_key("stitch", self.labeled_fingerprint(), stages.canvas(backbone))

        def fn(d: Path, resume: bool):
            return {"plans": stages.stitch_pictures(self.project, self.labeled[:4], backbone, d)}

        return self.runner.run_stage("stitch", key, fn)

    def finetune(self, r: int, extra_labels: dict) -> Path:
        """Stage F on the labeled cases and ``{case: label file}``."""
        from ..finetune import MODEL_META, finetune

        ft_cfg = finetune_config(self.cfg)
        extra_labeled = [(c, self.project.image_path(self.project.case(c)), p) for c, p in sorted(extra_labels.items())]
        extra_fp = [[c, self.sha[c], sha256_file(p)] for c, _, p in extra_labeled]
        key = make_key("finetune", stage_settings(ft_cfg), self.project.classes, self.labeled_fingerprint(), extra_fp,
                       *([self.warm_key] if self.warm else []))

        def fn(d: Path, resume: bool):
            def call(stage_cfg, after_oom):
                # after an out-of-memory retry the batch differs: the stage starts again
                return finetune(self.project, stage_cfg, out_dir=d, resume=resume and not after_oom,
                                should_stop=self.runner.should_stop, extra_labeled=tuple(extra_labeled),
                                init_from=self.warm.sam_dir if self.warm else None)

            with_oom_retry(call, ft_cfg, "SAM fine-tuning")
            meta = read_json(d / MODEL_META, "SAM model metadata", missing={})
            return {"model_id": meta.get("model_id"), "extra_labeled": [c for c, _, _ in extra_labeled]}

        return self.runner.run_stage(f"finetune-r{r}", key, fn)

    def pseudolabel(self, r: int, model_dir: Path, cases: list) -> Path:
        """SAM pseudo-labels of ``cases`` with the model in ``model_dir``, reused per case."""
        from ..pseudolabel import PSEUDO_JSON

        model_key = self.runner.key_of(model_dir)
        case_keys = {c: make_key("pseudo-case", model_key, c, self.sha[c], self.cfg.pseudo_overlap) for c in cases}
        key = make_key("pseudolabel", model_key, sorted(case_keys.items()))

        def fn(d: Path, resume: bool):
            done = self.runner.cases(d)
            for c in cases:  # the same SAM model and image in an earlier run
                if c not in done.entries and (found := done.reuse(c, case_keys[c], PSEUDO_SUFFIXES)):
                    stages.copy_index_entry(found[0] / PSEUDO_JSON, d / PSEUDO_JSON, c)
                    done.record(c, {"key": case_keys[c], "reused_from": str(found[0].relative_to(self.project.root))})
            index = read_json(d / PSEUDO_JSON, "pseudo-label index", missing={})
            todo = [c for c in cases if not (c in index.get("cases", {})
                                              and all((d / f"{c}{s}").exists() for s in PSEUDO_SUFFIXES))]
            if todo:  # written case by case; the cases done before a cancel are kept
                extra = {} if self.cfg.pseudo_overlap is None else {"overlap": float(self.cfg.pseudo_overlap)}
                embeddings = self.runner.folder.embeddings  # a frozen encoder runs once per image (..encoder_store)
                if linked := encoder_store.link_earlier(embeddings, self.earlier_embeddings(), todo):
                    events.log(f"reusing {linked} case(s) of frozen-encoder embeddings from earlier runs")
                distributed.call("pseudolabel", self.processes, self.run_path, self.runner.should_stop, self.project,
                                 model_dir=model_dir, out_dir=d, cases=todo, device=self.cfg.device,
                                 embeddings_dir=embeddings, **extra)
            for c in cases:
                done.entries.setdefault(c, {})["key"] = case_keys[c]
            done.save()
            return {"cases": cases, "computed": todo}

        return self.runner.run_stage(f"pseudolabel-r{r}", key, fn)

    def retrain(self, r: int, pseudo_dir: Path, cases: list, sam_model_dir: Path, label_files: dict) -> Path:
        """Stage R with the pseudo-labels of ``cases`` in ``pseudo_dir``, made by ``sam_model_dir``,
        and the unlabeled cases of ``{case: label file}`` with those labels."""
        rt_cfg = retrain_config(self.cfg)
        given = [[c, self.sha[c], sha256_file(p)] for c, p in sorted(label_files.items())]
        key = make_key("retrain", stage_settings(rt_cfg), self.project.classes, self.labeled_fingerprint(),
                       self.runner.key_of(pseudo_dir), sorted(cases), [self.sha[c] for c in sorted(cases)],
                       *([given] if given else []), *([self.warm_key] if self.warm else []),
                       *distributed.key_parts(self.processes, rt_cfg))

        def fn(d: Path, resume: bool):
            def call(stage_cfg, after_oom):
                return distributed.call("retrain", self.processes, self.run_path, self.runner.should_stop,
                                        self.project, stage_cfg, pseudo_dir=pseudo_dir, out_dir=d,
                                        resume=resume and not after_oom, unlabeled_cases=list(cases),
                                        sam_model_dir=sam_model_dir, label_files=dict(label_files),
                                        init_from=self.warm.vnet_dir if self.warm else None)

            with_oom_retry(call, rt_cfg, "V-Net re-training")
            return {"unlabeled_cases": list(cases), "with_labels": sorted(label_files)}

        return self.runner.run_stage(f"retrain-r{r}", key, fn)

    def confidence(self, r: int, model_dir: Path, sam_labels: dict) -> "tuple[Path, dict]":
        """The folder and ``{case: entry}`` of :meth:`stage_confidence`, each entry with its
        ``estimated_dice`` (:mod:`..quality`; never cached: the calibration may change)."""
        cf = self.stage_confidence(r, model_dir, sam_labels)
        return cf, self.with_estimates(self.measurements(cf))

    def label_file(self, confidence_dir: Path, case: str) -> Path:
        return confidence_dir / f"{case}.nii.gz"

    def with_estimates(self, entries: dict) -> dict:
        return quality.with_estimates(entries)

    def stage_confidence(self, r: int, model_dir: Path, sam_labels: dict) -> Path:
        """The V-Net's label, confidence map, quality signals and measurements of every unlabeled case.

        A case's prediction is keyed by the model, the image, SAM's pseudo-label it is compared with
        and the post-processing; the review settings are applied to the saved maps, so changing them
        re-predicts nothing; trust is decided later (:mod:`..sfrplus`) and never stored here.
        """
        settings = review_settings(self.cfg)
        names = [c.name for c in self.unlabeled]
        model_key = self.runner.key_of(model_dir)
        largest = bool(self.cfg.largest_component)
        # SAM's label a case is compared with, by the key of the stage that made it
        case_keys = {c: make_key("confidence-case", model_key, c, self.sha[c], self.runner.key_of(sam_labels[c].parent),
                                 largest) for c in names}
        key = make_key("confidence", sorted(case_keys.items()), settings)

        def fn(d: Path, resume: bool):
            done = self.runner.cases(d)
            bar = events.Progress("confidence", len(names))
            todo = []  # the cases predicted anew, after those found done or reused
            for i, c in enumerate(names):
                self.runner.check_cancel()
                inside(d, f"{c}{LAST_MAP}")  # the case's files stay in the stage folder
                entry = done.have(c, case_keys[c], LAST_MAP)
                if entry is None and (found := done.reuse(c, case_keys[c], CASE_SUFFIXES)):
                    entry = found[1]
                if entry is None:
                    todo.append(c)
                    continue
                if entry.get("params") != settings:
                    entry = stages.review_again(entry, self.project.case(c), self.project, d, settings)
                done.record(c, entry)
                bar.update(i + 1 - len(todo), case=c)
            if todo:
                self._review_new(d, model_dir, todo, case_keys, settings, sam_labels, largest, len(names), done)
            # in the order of the cases, as one case after the other leaves it
            done.entries = {**{c: done.entries[c] for c in names},
                            **{c: e for c, e in done.entries.items() if c not in names}}
            done.save()
            return {"cases": names}

        return self.runner.run_stage(f"confidence-r{r}", key, fn)

    def _review_new(self, d: Path, model_dir: Path, todo: list, case_keys: dict, settings: dict, sam_labels: dict,
                    largest: bool, total: int, done) -> None:
        """:func:`.stages.review_cases` of ``todo`` into the stage folder ``d``, each entry recorded
        in ``done`` (its ``cases.json``) with its key: at once in one process, once they meet on
        ``--processes N`` (each process writes its cases' maps; one case alone is not worth the
        start of N processes).  A cancel keeps the cases done."""
        processes = min(self.processes, len(todo))

        def record(c, entry):
            done.record(c, {"key": case_keys[c], **entry})

        computed = distributed.call("confidence", processes, self.run_path, self.runner.should_stop, self.project,
                                    model_dir=model_dir, out_dir=d, cases=list(todo), settings=settings,
                                    sam_labels={c: sam_labels[c] for c in todo}, largest_component=largest,
                                    class_mm3=self._class_mm3(), device=self.cfg.device, done_before=total - len(todo),
                                    **({"on_case": record} if processes == 1 else {}))
        if processes > 1:
            for c in todo:
                if c in computed:
                    record(c, computed[c])
        if len(computed) < len(todo):  # the processes stopped early: only a cancel does that
            self.runner.check_cancel()
            raise RuntimeError(f"the confidence stage returned {len(computed)} of {len(todo)} cases")

    # ---------------------------------------------------------------- SFR+ decisions
    def _labeled_mm3(self) -> list:
        """Physical volume (mm^3) of the structure of every labeled case, read once."""
        if self._labeled_vols is None:
            self._labeled_vols = [stages.structure_mm3(self.project.label_path(c)) for c in self.labeled]
        return self._labeled_vols

    def _class_mm3(self) -> list:
        """Median labeled volume (mm^3) of each foreground class, read once."""
        if self._class_vols is None:
            vols = [stages.class_mm3(self.project.label_path(c), self.project.num_classes) for c in self.labeled]
            self._class_vols = [float(np.median(v)) for v in zip(*vols)]
        return self._class_vols

    def measurements(self, cf: Path) -> dict:
        return read_json(cf / "cases.json", "stage's case records", missing={})

    def trust(self, entries: dict) -> dict:
        """``{case: trusted}`` by the run's trust policy (the decision is never cached)."""
        return self.policy.decide(entries, self.trust_context())

    def trust_context(self) -> "sfrplus.TrustContext":
        return sfrplus.TrustContext(tuple(self._labeled_mm3()))

    # ---------------------------------------------------------------- the whole run
    def run(self) -> dict:
        rounds = self.cfg.resolved_rounds
        # before stage F (None: logged why); step times of the project's earlier runs on this machine reused
        estimate = emit_estimate(self.project, self.cfg, self.run_path, self.processes,
                                 [r.calibration for r in self.earlier_runs()],
                                 self.warm.sam_dir if self.warm else None)
        if estimate:
            overall.start(estimate)  # one fraction and ETA across stages (ended by job.execute)
        self.runner.planned = 2 + 4 * (rounds + 1)
        self.stage_stitch()
        results, published = sfrplus.run_rounds(self, self.policy, self.trust_context(),
                                                [c.name for c in self.unlabeled], rounds,
                                                retrain_with=self.cfg.round_retrain, log=events.log)
        self.runner.planned = self.runner.index + 1  # + metrics
        chosen = results[published]
        return self.finalize(chosen.confidence, chosen.vnet, [res.record for res in results], chosen.record.round)

    def finalize(self, cf: Path, rt: Path, history: list, final_round: int) -> dict:
        """Metrics (cached as a stage), then publish the final results into the run folder."""
        val_fp = [[c.name, self.sha[c.name], sha256_file(self.project.label_path(c))]
                  for c in self.validation if c.label and self.project.label_path(c).exists()]
        unl_gt = [[c.name, sha256_file(self.project.label_path(c))]
                  for c in self.unlabeled if c.label and self.project.label_path(c).exists()]
        key = make_key("metrics", self.runner.key_of(cf), self.runner.key_of(rt), val_fp, unl_gt,
                       bool(self.cfg.largest_component))

        def fn(d: Path, resume: bool):
            metrics = self._metrics(cf, rt, d)
            write_json_atomic(d / "metrics.json", metrics)
            return {"metrics": sorted(metrics)}

        md = self.runner.run_stage("metrics", key, fn)
        out = self.run_path
        reviews = self.with_estimates(self.measurements(cf))
        for c in reviews:
            for suffix in CASE_SUFFIXES:
                link_or_copy(cf / f"{c}{suffix}", inside(out / PSEUDO_FOLDER, f"{c}{suffix}"))
        copy_tree(rt, out / "vnet")
        from ..retrain.inference import POSTPROCESS_JSON

        write_json_atomic(out / "vnet" / POSTPROCESS_JSON, {"largest_component": bool(self.cfg.largest_component)})
        if (md / "validation").is_dir():
            copy_tree(md / "validation", out / "validation")
        trusted = self.trust(reviews)
        write_json_atomic(out / REVIEW_JSON, {"cases": [review_record(reviews[c], trusted[c]) for c in reviews],
                                              "estimate": quality.DEFAULT.to_json(),
                                              "label_next": rank_cases(reviews.values())})
        write_json_atomic(out / "slices.json",
                          {c: {"slice_confidence": reviews[c].get("slice_confidence")} for c in reviews})
        write_json_atomic(out / "rounds.json", {"tau": self.cfg.tau, "trust": self.policy.describe(),
                                                "final_round": final_round, "rounds": [rec.to_json() for rec in history]})
        metrics = read_json(md / "metrics.json", "metrics", missing={})
        if metrics:
            write_json_atomic(out / "metrics.json", metrics)
        events.log(f"results in {out}: pseudo/ ({len(reviews)} cases), vnet/, review.json"
                   + (", metrics.json" if metrics else ""))
        return {"review": str(out / REVIEW_JSON)}

    def _metrics(self, cf: Path, rt: Path, work: Path) -> dict:
        from ..evaluation import evaluate_pairs

        out = {}
        pairs = [(c.name, cf / f"{c.name}.nii.gz", self.project.label_path(c))
                 for c in self.unlabeled if c.label and self.project.label_path(c).exists()]
        if pairs:
            out["pseudo_labels"] = evaluate_pairs(pairs)
        val = [c for c in self.validation if c.label and self.project.label_path(c).exists()]
        if val:
            vpairs = stages.predict_validation(rt, val, self.project, work / "validation", self.cfg.device,
                                               self.runner.check_cancel, bool(self.cfg.largest_component))
            out["validation"] = evaluate_pairs(vpairs)
        return out

