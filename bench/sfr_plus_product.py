"""SFR vs SFR+ through the product's own loop, and how well the quality estimate predicts Dice.

    # run the product (each seed a real 'sfr demo' process), then summarise:
    OMP_NUM_THREADS=1 python bench/sfr_plus_product.py --demo-seeds 1337 1 2 --work /tmp/sfr-plus
    # or summarise finished runs of any project with hidden labels (e.g. LA made with 'sfr run'):
    python bench/sfr_plus_product.py --runs PROJECT/runs/<id> ... --out sfr_plus_la_product [--validation-rounds]

Nothing of the method is re-implemented here: every number comes from the files a run of
``sfr demo`` / ``sfr run`` wrote (``rounds.json``, ``review.json``, the confidence stages'
``cases.json``, ``status.json``).  Round 0 of an SFR+ run *is* plain SFR (the same stages, the same
cache keys), so one run gives both.  Per run and round: mean and per-class Dice of the V-Net's
labels against the hidden ground truth, the estimate's Spearman and mean absolute error, the mean
Dice of trusted minus untrusted cases; per signal of :mod:`SFRSegmenterLib.quality`, its Spearman
with the true Dice (per class); and a calibration fitted on all runs but one, scored on the one
left out (``--fit``).  Results: ``bench/results/<--out>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, machine, pct as _pct

import numpy as np  # noqa: E402

from SFRSegmenterLib import quality, sfrplus  # noqa: E402

RESULTS = REPO / "bench" / "results"


def run_demo(seed: int, work: Path, extra: list) -> Path:
    """One real ``sfr demo`` process; returns its run folder."""
    out = work / f"demo-s{seed}"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "SFRSegmenterLib", "demo", "--out", str(out), "--seed", str(seed),
                           *extra], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"sfr demo failed (seed {seed}):\n{proc.stderr[-2000:]}")
    run = out / "runs" / (out / "runs" / "latest").read_text().strip()
    (run / "bench-wall.json").write_text(json.dumps({"wall_s": time.monotonic() - t0}))
    return run


def _json(path: Path, default=None):
    return json.loads(path.read_text()) if path.exists() else default


def round_entries(run: Path, r: int) -> dict:
    """The confidence stage's measurements of round ``r`` (signals, true Dice per class)."""
    return _json(run / "stages" / f"confidence-r{r}" / "cases.json", {})


def summarize_run(run: Path) -> dict:
    """Everything the tables need of one finished run, read from its files."""
    cfg = _json(run / "config.json", {})
    rounds = _json(run / "rounds.json", {})
    status = _json(run / "status.json", {})
    wall = (_json(run / "bench-wall.json") or {}).get("wall_s")
    out = {"run": str(run), "seed": cfg.get("seed"), "trust": rounds.get("trust"), "round_retrain": cfg.get("round_retrain"),
           "largest_component": cfg.get("largest_component"), "final_round": rounds.get("final_round"),
           "seconds": status.get("seconds"), "wall_s": wall, "rounds": []}
    # the round the product's rule publishes, from the run's own records (a run made before the
    # rule changed is re-judged by today's sfrplus.choose_round; 'published' is what it published)
    records = [sfrplus.RoundRecord.from_json(rec) for rec in rounds.get("rounds", [])]
    out["published_by_current_rule"] = records[sfrplus.choose_round(records)].round if records else None
    out["rejudged"] = rejudge(run)
    for rec in rounds.get("rounds", []):
        entries = round_entries(run, rec["round"])
        cases = rec["cases"]
        est = [cases[c].get("estimated_dice") for c in cases]
        dice = [cases[c].get("dice") for c in cases]
        per_class = [e.get("dice_per_class") for e in entries.values() if e.get("dice_per_class")]
        trusted = [cases[c]["dice"] for c in cases if cases[c]["trusted"] and cases[c].get("dice") is not None]
        untrusted = [cases[c]["dice"] for c in cases if not cases[c]["trusted"] and cases[c].get("dice") is not None]
        row = {
            "round": rec["round"], "published": rec.get("published"), "why": rec.get("why"),
            "mean_dice": rec.get("mean_dice"), "mean_estimated_dice": rec.get("mean_estimated_dice"),
            "mean_sam_dice": rec.get("mean_sam_dice"),
            "dice_per_class": [round(float(np.mean([p[k] for p in per_class if p[k] is not None])), 6)
                               for k in range(len(per_class[0]))] if per_class else None,
            "trusted": rec.get("trusted"), "n_cases": len(cases),
            "trusted_minus_untrusted": (round(float(np.mean(trusted) - np.mean(untrusted)), 6)
                                        if trusted and untrusted else None),
            "estimate": quality.accuracy(est, dice),
            "confidence_spearman": quality.spearman([cases[c]["confidence"] for c in cases], dice),
            "signals": signal_table(entries),
            "cases": {c: {"dice": cases[c].get("dice"), "estimated_dice": cases[c].get("estimated_dice"),
                          "confidence": cases[c]["confidence"], "trusted": cases[c]["trusted"]} for c in cases},
        }
        out["rounds"].append(row)
    return out


def validation_per_round(run: Path, work: Path, threads: int) -> list:
    """Each round's V-Net on the project's validation cases, through the product's commands
    (``sfr predict`` with the run's post-processing, ``sfr evaluate``): the held-out Dice of SFR
    (round 0) and of every SFR+ round, not only of the published one (metrics.json).  Predictions
    and reports go to ``work/<project>-<run>/`` (kept: a second call reads them), not into the run."""
    from SFRSegmenterLib.manifest import load_project

    project = load_project(run.parents[1])
    cases = [c for c in project.by_role("validation") if c.label and project.label_path(c).exists()]
    if not cases:
        return []
    cfg = _json(run / "config.json", {})
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out, work = [], Path(work) / f"{run.parents[1].name}-{run.name}"
    gt = work / "gt"
    gt.mkdir(parents=True, exist_ok=True)
    for c in cases:  # sfr evaluate matches files by name
        link = gt / f"{c.name}.nii.gz"
        if not link.exists():
            link.symlink_to(project.label_path(c).resolve())
    lc = "--largest-component" if cfg.get("largest_component") else "--no-largest-component"
    for r in range(len(_json(run / "rounds.json", {}).get("rounds", []))):
        pred, report = work / f"r{r}", work / f"r{r}.json"
        if not report.exists():
            cmd = [sys.executable, "-m", "SFRSegmenterLib", "--progress", "none"]
            subprocess.run([*cmd, "predict", "--model", str(run / "stages" / f"retrain-r{r}"), "--images",
                            *[str(project.image_path(c)) for c in cases], "--out", str(pred), "--overwrite",
                            "--device", "cpu", "--threads", str(threads), lc], env=env, check=True, capture_output=True)
            subprocess.run([*cmd, "evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(report), "--overwrite"],
                           env=env, check=True, capture_output=True)
        out.append({"round": r, **_json(report)})
    return out


def rejudge(run: Path) -> dict:
    """The run's rounds judged again with today's calibration and trust rule, by the product's own
    functions on the run's cached measurements: ``quality.estimate`` (through the pipeline's
    ``with_estimates``), the run's trust policy (``sfrplus.build_policy`` on its configuration), and
    ``sfrplus.round_record`` / ``choose_round``.  The later rounds' *outputs* stay what the run's
    own decisions made them: this says how the estimate ranks and which round it would publish,
    not what a run with it would have trained."""
    from SFRSegmenterLib.manifest import load_project
    from SFRSegmenterLib.run import config as run_config
    from SFRSegmenterLib.run import pipeline as run_pipeline

    cfg_json = _json(run / "config.json", {})
    fields = {f for f in run_config.RunConfig.__dataclass_fields__}
    cfg = run_config.RunConfig(**{k: v for k, v in cfg_json.items() if k in fields})
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        pipe = run_pipeline.Pipeline(load_project(run.parents[1]), Path(tmp) / "run", cfg)
        records, rows = [], []
        n = len(_json(run / "rounds.json", {}).get("rounds", []))
        for r in range(n):
            entries = pipe.with_estimates(round_entries(run, r))
            trusted = pipe.trust(entries)
            rec = sfrplus.round_record(r, entries, trusted, records[-1] if records else None,
                                       pipe._labeled_mm3(), [], [])
            records.append(rec)
            est = [entries[c]["estimated_dice"] for c in entries]
            dice = [entries[c].get("dice") for c in entries]
            t = [entries[c]["dice"] for c in entries if trusted[c]]
            u = [entries[c]["dice"] for c in entries if not trusted[c]]
            rows.append({"round": r, "estimate": quality.accuracy(est, dice), "mean_estimated_dice": rec.mean_estimated_dice,
                         "mean_dice": rec.mean_dice, "trusted": sorted(c for c in entries if trusted[c]),
                         "trusted_minus_untrusted": round(float(np.mean(t) - np.mean(u)), 6) if t and u else None})
        chosen = sfrplus.choose_round(records) if records else None
    return {"calibration": quality.DEFAULT.to_json(), "rounds": rows, "would_publish": chosen}


def signal_table(entries: dict) -> dict:
    """Spearman of each signal with the true Dice, over (case, class) pairs."""
    pairs = {name: ([], []) for name in ("agreement", "structure_confidence", "size_error", "case_confidence")}
    for e in entries.values():
        truth, sig = e.get("dice_per_class"), e.get("signals") or {}
        if not truth or not sig:
            continue
        for k, y in enumerate(truth):
            x = quality._features(sig, k)
            if y is None or x is None:
                continue
            for name, v in zip(("agreement", "structure_confidence", "size_error"), x):
                pairs[name][0].append(float(v))
                pairs[name][1].append(y)
            pairs["case_confidence"][0].append(e["confidence"])
            pairs["case_confidence"][1].append(y)
    return {name: quality.spearman(xs, ys) for name, (xs, ys) in pairs.items()}


def calibration_rows(run: Path) -> list:
    rows = []
    for r in range(len(_json(run / "rounds.json", {}).get("rounds", []))):
        for e in round_entries(run, r).values():
            if e.get("signals") and e.get("dice_per_class"):
                rows.append((e["signals"], e["dice_per_class"]))
    return rows


def held_out_fit(runs: list) -> dict:
    """Fit the calibration on every run but one; its estimate's error on the one left out."""
    out = {"folds": []}
    for i, run in enumerate(runs):
        train = [row for j, other in enumerate(runs) if j != i for row in calibration_rows(other)]
        cal = quality.fit_calibration(train, f"fitted on {len(runs) - 1} runs")
        test = calibration_rows(run)
        if cal is None or not test:
            continue
        est, truth, base = [], [], []
        for signals, dice in test:
            fitted = quality.estimate(signals, cal)["estimated_dice_per_class"]
            plain = quality.estimate(signals, quality.AGREEMENT_ONLY)["estimated_dice_per_class"]
            for k, y in enumerate(dice):
                if y is not None:
                    est.append(fitted[k])
                    base.append(plain[k])
                    truth.append(y)
        out["folds"].append({"left_out": str(run), "calibration": cal.to_json(),
                             "fitted": quality.accuracy(est, truth), "agreement_only": quality.accuracy(base, truth)})
    everything = [row for run in runs for row in calibration_rows(run)]
    cal = quality.fit_calibration(everything, f"fitted on {len(runs)} runs")
    out["all_runs"] = cal.to_json() if cal else None
    return out


def write(result: dict, name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))
    lines = [f"# SFR vs SFR+ through the product's loop ({name})", "",
             "Every number read from the files the product's runs wrote (bench/sfr_plus_product.py). "
             "Round 0 = plain SFR; 'published' = the round the run published (its run's rule); the 'published' "
             "rows of 'Across seeds' use today's sfrplus.choose_round on the same records. Dice in points, against the "
             "hidden labels of the unlabeled cases.", "",
             f"Machine: {json.dumps(result['machine'])}", "",
             "| seed | trust | round | published | mean Dice | per class | est. mean | Spearman est. | MAE est. | "
             "Spearman conf. | trusted - untrusted | trusted | time (min) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in result["runs"]:
        for r in run["rounds"]:
            pc = " / ".join(_pct(v) for v in (r["dice_per_class"] or []))
            e = r["estimate"]
            lines.append(f"| {run['seed']} | {run['trust']} | {r['round']} | {'yes' if r['published'] else ''} | "
                         f"{_pct(r['mean_dice'])} | {pc} | {_pct(r['mean_estimated_dice'])} | {e['spearman']} | "
                         f"{_pct(e['mae'])} | {r['confidence_spearman']} | {_pct(r['trusted_minus_untrusted'])} | "
                         f"{len(r['trusted'] or [])}/{r['n_cases']} | "
                         f"{'' if r['round'] else format((run['wall_s'] or run['seconds'] or 0) / 60, '.1f')} |")
    s = result["summary"]
    lines += ["", "## Across seeds", "",
              "| what | per seed | mean | spread (max - min) |", "|---|---|---|---|"]
    for key, label in (("round0", "round 0 (SFR) mean Dice"), ("published", "published mean Dice"),
                       ("gain", "published - round 0"), ("published_class_min", "published, worst class")):
        vals = s[key]
        lines.append(f"| {label} | {' / '.join(_pct(v) for v in vals)} | {_pct(np.mean(vals)) if vals else '-'} | "
                     f"{_pct(max(vals) - min(vals)) if vals else '-'} |")
    lines += ["", "## Signals: Spearman with the true Dice per (case, class), each round of each run", "",
              "| seed | round | agreement | structure confidence | size error | case confidence (Eq. 8) |",
              "|---|---|---|---|---|---|"]
    for run in result["runs"]:
        for r in run["rounds"]:
            sg = r["signals"]
            lines.append(f"| {run['seed']} | {r['round']} | {sg['agreement']} | {sg['structure_confidence']} | "
                         f"{sg['size_error']} | {sg['case_confidence']} |")
    lines += ["", "## The same rounds judged with today's calibration (the product's estimate, trust rule and round choice on each run's cached measurements)", "",
              f"Calibration: `{json.dumps(quality.DEFAULT.to_json())}`. The rounds' outputs are those the run's own decisions made.", "",
              "| seed | round | mean Dice | est. mean | Spearman est. | MAE est. | trusted - untrusted | would publish |", "|---|---|---|---|---|---|---|---|"]
    for run in result["runs"]:
        rj = run.get("rejudged") or {}
        for row in rj.get("rounds", []):
            lines.append(f"| {run['seed']} | {row['round']} | {_pct(row['mean_dice'])} | {_pct(row['mean_estimated_dice'])} | "
                         f"{row['estimate']['spearman']} | {_pct(row['estimate']['mae'])} | {_pct(row['trusted_minus_untrusted'])} | "
                         f"{'yes' if row['round'] == rj.get('would_publish') else ''} |")
    if any(run.get("validation_per_round") for run in result["runs"]):
        lines += ["", "## Every round's V-Net on the validation cases (held out; sfr predict + sfr evaluate)", "",
                  "| seed | round | validation Dice | per class | SFR+ round - round 0 |", "|---|---|---|---|---|"]
        for run in result["runs"]:
            vals = run.get("validation_per_round") or []
            for v in vals:
                per = v.get("mean_per_class") or {}  # one foreground class: the mean is the class
                pc = " / ".join(_pct(per[k]["dice"]) for k in sorted(per, key=int)) or _pct(v["mean"]["dice"])
                gain = "" if not v["round"] else f"{100 * (v['mean']['dice'] - vals[0]['mean']['dice']):+.1f}"
                lines.append(f"| {run['seed']} | {v['round']} | {_pct(v['mean']['dice'])} | {pc} | {gain} |")
    fit = result.get("fit") or {}
    if fit.get("folds"):
        lines += ["", "## Calibration fitted on the other runs, scored on the one left out (per class)", "",
                  "| left out | fitted: Spearman / MAE | agreement only: Spearman / MAE |", "|---|---|---|"]
        for f in fit["folds"]:
            lines.append(f"| {Path(f['left_out']).parents[1].name} | {f['fitted']['spearman']} / {_pct(f['fitted']['mae'])} | "
                         f"{f['agreement_only']['spearman']} / {_pct(f['agreement_only']['mae'])} |")
        lines += ["", f"Fitted on all runs: `{json.dumps(fit.get('all_runs'))}`"]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


def summary(runs: list) -> dict:
    out = {"round0": [], "published": [], "gain": [], "published_class_min": []}
    for run in runs:
        r0 = run["rounds"][0]
        pub = run["rounds"][run["published_by_current_rule"]]
        out["round0"].append(r0["mean_dice"])
        out["published"].append(pub["mean_dice"])
        out["gain"].append(round(pub["mean_dice"] - r0["mean_dice"], 6))
        out["published_class_min"].append(min(pub["dice_per_class"]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo-seeds", type=int, nargs="*", default=[], help="run 'sfr demo' at these seeds first")
    ap.add_argument("--demo-option", action="append", default=[], help="extra 'sfr demo' argument (repeatable)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sfr-plus-product"),
                    help="the demo runs, and --validation-rounds' predictions")
    ap.add_argument("--runs", type=Path, nargs="*", default=[], help="finished run folders to summarise")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--out", default="sfr_plus_demo_product")
    ap.add_argument("--validation-rounds", action="store_true",
                    help="also score every round's V-Net on the project's validation cases (sfr predict + sfr evaluate)")
    args = ap.parse_args(argv)
    runs = [run_demo(s, args.work, args.demo_option) for s in args.demo_seeds] + list(args.runs)
    if not runs:
        ap.error("give --demo-seeds or --runs")
    summaries = [summarize_run(r) for r in runs]
    if args.validation_rounds:
        for r, sm in zip(runs, summaries):
            sm["validation_per_round"] = validation_per_round(r, args.work / "validation", args.threads)
    result = {"machine": machine(args.threads), "runs": summaries, "summary": summary(summaries),
              "fit": held_out_fit(runs) if len(runs) > 1 else None}
    write(result, args.out)
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
