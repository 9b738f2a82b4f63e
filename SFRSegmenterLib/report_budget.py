"""The report's "Budget and time" section: the budget and why, the estimate against the stages'
measured times, and per training stage the share of iterations a class was predicted nowhere."""

from __future__ import annotations

import json
from pathlib import Path

from .project_folders import SAM_MODEL_META

#: where a training stage's folder keeps its class-balance summary
BALANCE_FILES = (SAM_MODEL_META, "meta.json")


def _estimate(events_path: Path) -> "dict | None":
    """The run's last estimate event (a resumed run estimates again)."""
    found = None
    try:
        with open(events_path, encoding="utf-8") as fh:
            for line in fh:
                if '"estimate"' in line:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if rec.get("event") == "estimate":
                        found = rec
    except OSError:
        return None
    return found


def _absent(stage_dir: Path) -> "dict | None":
    for name in BALANCE_FILES:
        try:
            meta = json.loads((stage_dir / name).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        bal = meta.get("class_balance") or {}
        if "absent_fraction" in bal:
            return bal
    return None


def budget_context(run: Path, cfg: dict, stages: dict) -> dict:
    """Template fields: ``budget_line``, ``estimate_line``, ``time_rows``, ``absent_rows``."""
    from .run.budget import summary
    from .run.estimate import about, how_calibrated

    est = _estimate(run / "events.jsonl")
    per = (est or {}).get("stages", {})
    actual = sum(float(r.get("seconds") or 0) for r in stages.values())
    ctx = {"budget_line": summary(cfg.get("budget_choice")), "estimate_line": None, "time_rows": [],
           "absent_rows": []}
    if est:
        ratio = actual / est["seconds"] if est.get("seconds") else None
        ctx["estimate_line"] = (f"Estimated before the run: {about(est['seconds'])} ({est['seconds']:.0f} s, "
                                f"{how_calibrated(est)}); the stages took "
                                f"{actual:.0f} s" + (f" ({ratio:.2f} x the estimate)" if ratio else ""))
    for name, rec in stages.items():
        e = per.get(name)
        ctx["time_rows"].append({"cells": [name, f"{float(rec.get('seconds') or 0):.1f}",
                                           "-" if e is None else f"{float(e):.1f}"], "bold": ()})
    for name in stages:
        if not name.startswith(("finetune", "retrain")):
            continue
        bal = _absent(run / "stages" / name)
        if bal is None:
            continue
        per_class = ", ".join(f"{c}: {100 * v['absent_fraction']:.1f} %" for c, v in bal["classes"].items())
        worst = 100 * bal["absent_fraction"]
        ctx["absent_rows"].append({"cells": [name, bal.get("iterations", "-"), per_class, f"{worst:.1f} %"],
                                   "bold": (3,) if worst > 10 else ()})
    return ctx
