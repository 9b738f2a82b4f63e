"""Which calibration of the quality estimate (SFRSegmenterLib/quality.py) holds across datasets.

    # finished runs of projects with hidden labels (sfr demo's, LA made with sfr run), any mix:
    python bench/quality_fit.py --runs LA/runs/<id> ... DEMO/runs/<id> ... --out quality_fit
    # again later, without the run folders (their measurements were stored in --rows):
    python bench/quality_fit.py --out quality_fit

Each run's measurements (the confidence stages' ``cases.json`` of every round: the signals and the
true Dice against the hidden labels; the run's trust settings; the labeled structures' volumes) are
stored in ``--rows`` (default ``bench/results/quality_rows.json``, merged by run), so a calibration
can be refitted and scored when the run folders are gone.

Then one run at a time is left out and each candidate calibration is scored on it, per round:

* ``shipped``: today's ``quality.DEFAULT``;
* ``same dataset``: fitted on the other runs of the left-out run's dataset (the classes' names);
* ``other datasets``: fitted on the other datasets only (what a new dataset meets);
* ``pooled``: fitted on every other run, each dataset weighted equally (``fit_calibration``'s row
  weights), whatever its number of cases;
* ``pooled, no size``: the same without the size error (every size ratio read as 1), for projects
  whose few labeled cases are a poor size reference (LA with one).

Scores: Spearman and mean absolute error of the case estimate (the mean over the classes, as
``review.json`` has it) against the case's true Dice, and the trusted cases' mean Dice minus the
untrusted ones' when the run's own trust policy (``sfrplus.build_policy`` on its configuration,
the ``TrustContext`` of its labeled volumes) decides on those estimates, made by
``quality.with_estimates`` (what a run's pipeline calls); nothing of the method is re-implemented.
The pooled fit on all runs is written as the candidate default.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import REPO, pct as _pct

import numpy as np  # noqa: E402

from SFRSegmenterLib import quality, sfrplus  # noqa: E402

RESULTS = REPO / "bench" / "results"
#: What a trust policy and the calibration read of a ``cases.json`` entry (the rest is not stored).
KEEP = ("confidence", "foreground_voxels", "voxel_mm3", "signals", "dice", "dice_per_class", "sam_dice")


def _json(path: Path, default=None):
    return json.loads(path.read_text()) if path.exists() else default


def read_run(run: Path) -> dict:
    """The stored form of one finished run (see the module docstring)."""
    from SFRSegmenterLib.manifest import load_project
    from SFRSegmenterLib.run import stages

    run = Path(run).resolve()
    project = load_project(run.parents[1])
    labeled = [c for c in project.by_role("labeled")]
    cfg = _json(run / "config.json", {})
    n = len(_json(run / "rounds.json", {}).get("rounds", []))
    rounds = []
    for r in range(n):
        entries = _json(run / "stages" / f"confidence-r{r}" / "cases.json", {})
        rounds.append({c: {k: e[k] for k in KEEP if k in e} for c, e in entries.items()})
    return {"run": str(run), "dataset": ",".join(project.classes), "seed": cfg.get("seed"),
            "config": {k: cfg.get(k) for k in ("trust", "trust_fraction", "trust_floor", "tau", "min_structure")},
            "labeled_mm3": [stages.structure_mm3(project.label_path(c)) for c in labeled], "rounds": rounds}


def rows_of(runs: list) -> list:
    """``[(signals, true Dice per class)]`` of every case of every round of ``runs``."""
    return [(e["signals"], e["dice_per_class"]) for run in runs for entries in run["rounds"]
            for e in entries.values() if e.get("signals") and e.get("dice_per_class")]


def without_size(run: dict) -> dict:
    """``run`` with every size ratio set to 1 (size error 0): the calibration then cannot use it."""
    rounds = [{c: {**e, "signals": {**e["signals"], "size_ratio": [1.0] * len(e["signals"]["size_ratio"])}}
               if e.get("signals") else e for c, e in entries.items()} for entries in run["rounds"]]
    return {**run, "rounds": rounds}


def fit(runs: list, source: str, balanced: bool) -> "quality.Calibration | None":
    """``quality.fit_calibration`` on ``runs``; ``balanced``: each dataset's rows weigh 1 in all."""
    per_run = [(run["dataset"], rows_of([run])) for run in runs]
    per_dataset = {}
    for ds, mine in per_run:
        per_dataset[ds] = per_dataset.get(ds, 0) + len(mine)
    rows = [row for _, mine in per_run for row in mine]
    weights = [(1.0 / per_dataset[ds]) if balanced else 1.0 for ds, mine in per_run for _ in mine]
    if balanced and weights:  # scale so the weights sum to the number of rows (the ridge stays as small)
        weights = list(np.array(weights) * len(weights) / np.sum(weights))
    return quality.fit_calibration(rows, source, weights=weights)


def score(run: dict, cal: "quality.Calibration") -> list:
    """Per round: the case estimate's accuracy and trusted - untrusted Dice under the run's policy."""
    from SFRSegmenterLib.run.config import RunConfig

    # the run's trust settings over RunConfig's defaults (what the run's Pipeline built its policy from)
    policy = sfrplus.build_policy(RunConfig(**{k: v for k, v in run["config"].items() if v is not None}))
    context = sfrplus.TrustContext(tuple(run["labeled_mm3"]))
    out = []
    for r, entries in enumerate(run["rounds"]):
        judged = quality.with_estimates(entries, cal)
        trusted = policy.decide(judged, context)
        est = [judged[c]["estimated_dice"] for c in judged]
        dice = [judged[c].get("dice") for c in judged]
        t = [judged[c]["dice"] for c in judged if trusted[c] and judged[c].get("dice") is not None]
        u = [judged[c]["dice"] for c in judged if not trusted[c] and judged[c].get("dice") is not None]
        known = [(a, b) for a, b in zip(est, dice) if a is not None and b is not None]
        out.append({"round": r, **quality.accuracy(est, dice),
                    "bias": round(float(np.mean([a - b for a, b in known])), 4) if known else None,
                    "trusted_minus_untrusted": round(float(np.mean(t) - np.mean(u)), 4) if t and u else None,
                    "trusted": len(t), "cases": len(judged)})
    return out


def evaluate(runs: list) -> dict:
    folds = []
    for i, run in enumerate(runs):
        others = [o for j, o in enumerate(runs) if j != i]
        same = [o for o in others if o["dataset"] == run["dataset"]]
        other = [o for o in others if o["dataset"] != run["dataset"]]
        candidates = {"shipped": quality.DEFAULT,
                      "same dataset": fit(same, f"fitted on {len(same)} other runs of the dataset", False) if same else None,
                      "other datasets": fit(other, f"fitted on {len(other)} runs of other datasets", False) if other else None,
                      "pooled": fit(others, f"fitted on {len(others)} other runs, datasets weighted equally", True)}
        scored = {name: {"calibration": cal.to_json(), "rounds": score(run, cal)}
                  for name, cal in candidates.items() if cal is not None}
        nosize = fit([without_size(o) for o in others], f"fitted on {len(others)} other runs without the size error, "
                     "datasets weighted equally", True)
        if nosize is not None:
            scored["pooled, no size"] = {"calibration": nosize.to_json(), "rounds": score(without_size(run), nosize)}
        folds.append({"left_out": run["run"], "dataset": run["dataset"], "seed": run["seed"], "candidates": scored})
    pooled = fit(runs, f"fitted on {len(runs)} runs of {len({r['dataset'] for r in runs})} datasets, "
                       "datasets weighted equally (bench/quality_fit.py)", True)
    return {"folds": folds, "pooled_all": pooled.to_json() if pooled else None,
            "pooled_all_in_sample": {r["run"]: score(r, pooled) for r in runs} if pooled else None}


def write(result: dict, name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))
    lines = [f"# The quality estimate's calibration across datasets ({name})", "",
             "Each run left out in turn; every candidate scored on it (bench/quality_fit.py). Per round: Spearman and "
             "mean absolute error (points) of the case estimate against the case's true Dice, the mean bias "
             "(estimate - truth, points), and trusted - untrusted Dice under the run's own trust policy deciding on "
             "those estimates.", "",
             "| dataset | seed | round | candidate | Spearman | MAE | bias | trusted - untrusted | trusted |",
             "|---|---|---|---|---|---|---|---|---|"]
    for f in result["folds"]:
        for cand, v in f["candidates"].items():
            for r in v["rounds"]:
                lines.append(f"| {f['dataset']} | {f['seed']} | {r['round']} | {cand} | {r['spearman']} | {_pct(r['mae'])} | "
                             f"{_pct(r['bias'])} | {_pct(r['trusted_minus_untrusted'])} | {r['trusted']}/{r['cases']} |")
    lines += ["", "## Mean over the left-out runs and rounds", "",
              "| dataset | candidate | Spearman | MAE | trusted - untrusted |", "|---|---|---|---|---|"]
    for ds in sorted({f["dataset"] for f in result["folds"]}):
        for cand in ("shipped", "same dataset", "other datasets", "pooled", "pooled, no size"):
            rs = [r for f in result["folds"] if f["dataset"] == ds for r in f["candidates"].get(cand, {}).get("rounds", [])]
            if not rs:
                continue
            m = lambda k: np.mean([r[k] for r in rs if r[k] is not None]) if any(r[k] is not None for r in rs) else None  # noqa: E731
            sp = m("spearman")
            lines.append(f"| {ds} | {cand} | {'-' if sp is None else format(sp, '.3f')} | {_pct(m('mae'))} | "
                         f"{_pct(m('trusted_minus_untrusted'))} |")
    lines += ["", f"Pooled on all runs (the candidate default): `{json.dumps(result['pooled_all'])}`", ""]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, nargs="*", default=[], help="finished run folders (hidden labels) to add")
    ap.add_argument("--rows", type=Path, default=RESULTS / "quality_rows.json",
                    help="stored measurements of earlier runs (read, then rewritten with --runs merged in)")
    ap.add_argument("--out", default="quality_fit")
    args = ap.parse_args(argv)
    stored = {r["run"]: r for r in (_json(args.rows, {}) or {}).get("runs", [])}
    for run in args.runs:
        r = read_run(run)
        stored[r["run"]] = r
    runs = list(stored.values())
    if len(runs) < 2:
        ap.error("need at least two runs (give --runs, or a --rows file that holds them)")
    if args.runs:
        args.rows.write_text(json.dumps({"runs": runs}, separators=(",", ":")))
    result = {"runs": [{k: r[k] for k in ("run", "dataset", "seed")} for r in runs], **evaluate(runs)}
    write(result, args.out)
    print(json.dumps(result["pooled_all"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
