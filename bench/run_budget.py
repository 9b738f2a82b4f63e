"""`sfr run PROJECT` with no tuning options on the bundled sample on the CPU (issue 20).

The project is made as `sfr demo` makes it (2 labeled, 10 unlabeled whose labels are hidden
ground truth).  Records the budget chosen, the estimate event against the wall time and the
stages' times, the Dice per class of the published labels, and the share of iterations in which
a class was predicted nowhere, per training stage.  Writes bench/results/run_budget.{json,md}.

    OMP_NUM_THREADS=1 python bench/run_budget.py [--seed 1337] [--note "..."]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, machine  # noqa: E402 (puts the checkout first on sys.path)
from demo_quality import score  # noqa: E402 (the same Dice of the published labels)

from SFRSegmenterLib import jobs  # noqa: E402
from SFRSegmenterLib.commands.demo import make_demo_project  # noqa: E402


def _balance(run: Path) -> dict:
    out = {}
    for d in sorted((run / "stages").glob("*")):
        for name in ("sam-model.json", "meta.json"):
            if (d / name).exists():
                bal = json.loads((d / name).read_text()).get("class_balance") or {}
                if "absent_fraction" in bal:
                    out[d.name] = {"worst": bal["absent_fraction"], "iterations": bal.get("iterations"),
                                   "per_class": {c: v["absent_fraction"] for c, v in bal["classes"].items()}}
    return out


def run_once(seed: int, work: Path) -> dict:
    root = work / f"sample-seed{seed}"
    if root.exists():
        shutil.rmtree(root)
    make_demo_project(root, 2)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "SFRSegmenterLib", "--progress", "json", "run", str(root),
                           "--seed", str(seed)], env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"sfr run failed:\n{proc.stderr[-3000:]}")
    evs = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    est = next(e for e in evs if e["event"] == "estimate")
    run = jobs.run_dir(root)
    stages = json.loads((run / "stages.json").read_text())
    cfg = json.loads((run / "config.json").read_text())
    from SFRSegmenterLib.manifest import load_project

    project = load_project(root)
    stage_total = sum(float(v.get("seconds") or 0) for v in stages.values())
    return {"seed": seed, "wall_s": round(wall, 1), "stages_s": round(stage_total, 1),
            "estimate_s": est["seconds"], "estimate_over_wall": round(wall / est["seconds"], 3),
            "calibration_s": est["calibration_s"], "estimate_stages": est["stages"],
            "stage_s": {k: v.get("seconds") for k, v in stages.items()}, "steps": est["steps"],
            "budget": cfg["budget_choice"]["name"], "why": cfg["budget_choice"]["why"],
            "final": score(project, run / "pseudo"), "sam": score(project, run / "stages" / "pseudolabel-r0"),
            "absent": _balance(run),
            "warnings": [ln for ln in (run / "log.txt").read_text().splitlines() if " warning: " in ln]}


def write(res: dict, args, out: Path) -> None:
    payload = {"benchmark": "run_budget", "command": "sfr run PROJECT --seed S (no tuning options)",
               "machine": machine(int(os.environ.get("OMP_NUM_THREADS", "0")) or None),
               "load_avg_at_end": os.getloadavg()[0], "note": args.note, "result": res}
    out.mkdir(parents=True, exist_ok=True)
    (out / "run_budget.json").write_text(json.dumps(payload, indent=1))
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    f, s = res["final"]["dice_per_class"], res["sam"]["dice_per_class"]
    lines = ["# `sfr run` with no tuning options on the bundled sample, CPU", "",
             args.note, "",
             f"Budget chosen: **{res['budget']}** ({res['why']}).", "",
             "| seed | estimate s | wall s | wall / estimate | SAM Dice 1 / 2 | final Dice 1 / 2 |",
             "|---|---|---|---|---|---|",
             f"| {res['seed']} | {res['estimate_s']:.0f} | {res['wall_s']:.0f} | {res['estimate_over_wall']:.2f} | "
             f"{pct(s.get('1'))} / {pct(s.get('2'))} | {pct(f.get('1'))} / {pct(f.get('2'))} |", "",
             "| stage | estimated s | measured s |", "|---|---|---|"]
    for k, v in res["stage_s"].items():
        lines.append(f"| {k} | {res['estimate_stages'].get(k, '-')} | {v} |")
    lines += ["", "Iterations with a class present in the targets predicted nowhere (worst class):", "",
              "| stage | iterations | worst | per class |", "|---|---|---|---|"]
    for k, v in res["absent"].items():
        lines.append(f"| {k} | {v['iterations']} | {pct(v['worst'])} % | "
                     + ", ".join(f"{c}: {pct(x)} %" for c, x in v["per_class"].items()) + " |")
    lines += ["", f"Load average at the end: {payload['load_avg_at_end']:.1f} on {os.cpu_count()} cores.",
              f"Warnings in the log: {len(res['warnings'])}."]
    (out / "run_budget.md").write_text("\n".join(lines) + "\n")


def partial(run: Path, args, out: Path) -> None:
    """What an unfinished run shows so far: its estimate against the stages finished, its progress."""
    evs = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines() if x.startswith("{")]
    est = next(e for e in evs if e["event"] == "estimate")
    stages = json.loads((run / "stages.json").read_text())
    status = json.loads((run / "status.json").read_text())
    started = next(e["time"] for e in evs)
    payload = {"benchmark": "run_budget", "finished": False, "note": args.note, "run": run.name,
               "machine": machine(int(os.environ.get("OMP_NUM_THREADS", "0")) or None),
               "load_avg_now": os.getloadavg()[0], "first_event": started, "now": status.get("updated"),
               "estimate": est, "stages": stages,
               "status": {k: status.get(k) for k in ("stage", "substage", "step", "total", "overall", "overall_eta_s")}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "run_budget_partial.json").write_text(json.dumps(payload, indent=1))
    lines = ["# `sfr run` with no tuning options on the bundled sample, CPU: UNFINISHED at the deadline", "",
             args.note, "", f"Budget: {est['budget']}; estimate {est['seconds']:.0f} s "
             f"(calibrated in {est['calibration_s']:.0f} s); first event {started}, last status {status.get('updated')}.", "",
             "| stage | estimated s | measured s | status |", "|---|---|---|---|"]
    for k, v in est["stages"].items():
        rec = stages.get(k, {})
        lines.append(f"| {k} | {v} | {rec.get('seconds', '-')} | {rec.get('status', 'not started')} |")
    st = payload["status"]
    lines += ["", f"At the last status: stage {st['stage']} ({st['substage']} {st['step']}/{st['total']}), "
              f"overall {st['overall']}, overall ETA {st['overall_eta_s']} s.",
              f"Load average now: {payload['load_avg_now']:.1f} on {os.cpu_count()} cores."]
    (out / "run_budget_partial.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--partial", type=Path, metavar="RUN", help="summarise an unfinished run folder instead")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args(argv)
    if args.partial:
        partial(args.partial, args, args.out)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        res = run_once(args.seed, Path(tmp))
    write(res, args, args.out)
    print(json.dumps({k: res[k] for k in ("wall_s", "estimate_s", "budget")}), res["final"]["dice_per_class"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
